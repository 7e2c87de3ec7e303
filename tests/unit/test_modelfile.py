"""The Modelfile's TEMPLATE, rendered by Go's text/template (the engine Ollama renders it with, fed the same
.System/.Messages data), gives the text of Meta's Llama 2 format that chat_format encodes; and the Modelfile
carries FROM, stop sequences, the system prompt and the licence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from finetune.config import UserError
from finetune.ship import modelfile

RENDER_GO = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	var in struct {
		Template string
		System   string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(in.Template))
	data := map[string]any{"System": in.System, "Messages": in.Messages, "Prompt": "", "Response": ""}
	if err := t.Execute(os.Stdout, data); err != nil {
		os.Stderr.WriteString(err.Error())
		os.Exit(1)
	}
}
"""
SYSTEM = "You are a terse assistant.  Answer in one line."
DIALOG = [
    {"role": "user", "content": "What is  2+2?\n(show work)"},
    {"role": "assistant", "content": "4, as 2+2 = 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
    {"role": "user", "content": "Grüße — 日本語?"},
]


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    """A Go program that renders a template as Ollama does (text/template over .System and .Messages)."""
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go") else None)
    if go is None:
        pytest.skip("needs Go: `make system-deps` installs golang-go (as root, apt)")
    d = tmp_path_factory.mktemp("gotemplate")
    (d / "render.go").write_text(RENDER_GO)
    env = {
        **os.environ,
        "GOCACHE": str(d / "cache"),
        "GOPATH": str(d / "path"),
        "GOFLAGS": "-mod=mod",
        "GO111MODULE": "off",
    }
    subprocess.run([go, "build", "-o", str(d / "render"), str(d / "render.go")], check=True, env=env, timeout=300)

    def run(system: str, messages: list[dict]) -> str:
        data = {
            "Template": modelfile.TEMPLATE,
            "System": system,
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
        }
        proc = subprocess.run(
            [str(d / "render")], input=json.dumps(data), capture_output=True, text=True, check=True, timeout=60
        )
        return proc.stdout

    return run


@pytest.mark.parametrize("turns", [1, 3, 5], ids=["one turn", "two turns", "three turns"])
def test_template_renders_metas_text_with_a_system_prompt(render, turns):
    dialog = DIALOG[:turns]
    want = modelfile.expected_text([{"role": "system", "content": SYSTEM}, *dialog])
    assert want.startswith("[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\nWhat is  2+2?")  # BOS: Ollama adds it
    assert render(SYSTEM, dialog) == want
    # whether or not Ollama's version leaves the system message in .Messages
    assert render(SYSTEM, [{"role": "system", "content": SYSTEM}, *dialog]) == want


def test_template_without_a_system_prompt(render):
    assert render("", DIALOG) == modelfile.expected_text(DIALOG)
    assert render("", DIALOG).count("<s>[INST] ") == 2 and render("", DIALOG).count(" </s>") == 2


def test_modelfile_names_the_gguf_stops_system_and_licence(tmp_path):
    lic = tmp_path / "LICENSE-LLAMA2"
    lic.write_text((ROOT / "data/llama2-tokenizer/LICENSE-LLAMA2").read_text())
    path = modelfile.write(tmp_path, "run.q4_0.gguf", "  Be brief.  ", lic)
    text = path.read_text()
    assert path.name == "Modelfile.q4_0" and "ollama create <name> -f Modelfile.q4_0" in text
    assert "FROM ./run.q4_0.gguf\n" in text and f'TEMPLATE """{modelfile.TEMPLATE}"""' in text
    assert 'PARAMETER stop "</s>"' in text and 'PARAMETER stop "[INST]"' in text
    assert 'SYSTEM """Be brief."""' in text and "LLAMA 2 COMMUNITY LICENSE" in text.upper()
    with pytest.raises(UserError, match="cannot contain"):
        modelfile.write(tmp_path, "run.q4_0.gguf", 'say """hi"""', lic)
