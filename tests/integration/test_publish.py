"""publish.py against a test double of the Hub's HTTP API (tests/hub_double.py; it is not the Hub).

The real `huggingface_hub` client talks HTTP to it from the publish subprocess; the round trip then downloads
with `snapshot_download` and loads the adapter with peft, as a user of the published repo would.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests import hub_double
from tests.conftest import ROOT, run_entry

pytestmark = pytest.mark.slow
TOKEN = "hf_" + "T3stT0ken" * 4  # what the double accepts; a real token has the same shape
USER = "tester"


hub = hub_double.served({TOKEN: USER})


run = hub_double.adapter_copy()


def publish(run, hub, tmp_path, *overrides, token=TOKEN, check=True):
    return hub_double.publish(run, hub, tmp_path, *overrides, token=token, check=check)


DOWNLOAD_AND_COMPARE = """
import sys, torch
from huggingface_hub import snapshot_download, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft import PeftModel
from transformers import AutoModelForCausalLM
repo, local, token, cache = sys.argv[1:5]
try:
    snapshot_download(repo, token=False, cache_dir=cache + "/anon")
    print("anonymous: allowed")
except RepositoryNotFoundError:
    print("anonymous: refused")
path = snapshot_download(repo, token=token, cache_dir=cache)
print("card library:", ModelCard.load(path + "/README.md").data.library_name)
ids = torch.tensor([[1, 518, 25580, 29962, 15043, 518, 29914, 25580, 29962]])
def logits(adapter):
    base = AutoModelForCausalLM.from_pretrained(__import__("json").load(open(local + "/adapter_config.json"))
                                                ["base_model_name_or_path"])
    with torch.no_grad():
        return PeftModel.from_pretrained(base, adapter).eval()(input_ids=ids).logits
print("max diff:", float((logits(path) - logits(local)).abs().max()))
"""


def test_round_trip(run, hub, tmp_path):
    proc = publish(run, hub, tmp_path, "repo_id=tester/tiny-qlora", "private=true")
    assert f"published: {hub.url}/tester/tiny-qlora/commit/" in proc.stdout
    assert hub.repos["tester/tiny-qlora"].private
    remote = hub.files("tester/tiny-qlora")
    local = {p.name: p.read_bytes() for p in (run / "adapter").iterdir() if p.name != "training_args.bin"}
    assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local  # one commit, every file, bytes
    repo = hub.repos["tester/tiny-qlora"]
    assert repo.messages[repo.branches["main"]] == "Upload adapter from run"
    # the token went in the Authorization header only: not into any file, nor into what publish printed
    assert not any(TOKEN.encode() in v for v in remote.values()) and TOKEN not in proc.stdout + proc.stderr

    dl = subprocess.run(
        [
            sys.executable,
            "-c",
            DOWNLOAD_AND_COMPARE,
            "tester/tiny-qlora",
            str(run / "adapter"),
            TOKEN,
            str(tmp_path / "dl"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **hub_double.env(hub, tmp_path, TOKEN)},
    )
    assert dl.returncode == 0, dl.stderr[-3000:]
    assert "anonymous: refused" in dl.stdout  # a private repo without a token
    assert "card library: peft" in dl.stdout
    assert "max diff: 0.0" in dl.stdout  # identical logits from the downloaded adapter


def test_branch(run, hub, tmp_path):
    publish(run, hub, tmp_path, "repo_id=tester/branchy", "revision=exp-1", "commit_message=first try")
    assert "adapter_model.safetensors" in hub.files("tester/branchy", "exp-1")
    assert set(hub.files("tester/branchy", "main")) == {".gitattributes"}


def test_dry_run_sends_nothing(run, hub, tmp_path):
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/dry", "dry_run=true", token=None)
    assert "public repo tester/dry, one commit: 'Upload adapter from run'" in proc.stdout
    assert "adapter_model.safetensors" in proc.stdout and "training_args.bin" not in proc.stdout
    assert "dry run: nothing sent (no token found" in proc.stdout
    assert len(hub.requests) == before


def test_missing_token(run, hub, tmp_path):
    proc = publish(run, hub, tmp_path, "repo_id=tester/x", token=None, check=False)
    assert proc.returncode == 2
    assert "error: no Hugging Face token: set HF_TOKEN=<a write token> or run `hf auth login`" in proc.stderr


def test_rejected_token(run, hub, tmp_path):
    bad = "hf_" + "wrong" * 7
    proc = publish(run, hub, tmp_path, "repo_id=tester/x", token=bad, check=False)
    assert proc.returncode == 2
    assert f"error: {hub.url} refused the token (401) for tester/x" in proc.stderr
    assert "Nothing was published" in proc.stderr or "no commit from this upload" in proc.stderr
    assert bad not in proc.stdout + proc.stderr and "tester/x" not in hub.repos


def test_network_failure(run, hub, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**hub_double.env(hub, tmp_path, TOKEN), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    proc = run_entry("publish.py", f"run={run}", "repo_id=tester/x", env=env, check=False)
    assert proc.returncode == 2
    assert f"error: could not reach http://127.0.0.1:{port} (ConnectError" in proc.stderr
    assert "Nothing was published" in proc.stderr


def test_token_like_string_is_refused(run, hub, tmp_path):
    (run / "adapter" / "notes.txt").write_text("login with hf_" + "a1B2" * 9 + "\n")
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/leaky", check=False)
    assert proc.returncode == 2
    assert "holds token-like strings, refusing to publish: notes.txt (byte 11: hf_a1...)" in proc.stderr
    assert len(hub.requests) == before


def test_merged_needs_export_first(run, hub, tmp_path):
    proc = publish(run, hub, tmp_path, "repo_id=tester/m", "what=merged", check=False)
    assert proc.returncode == 2 and "python finetune/export.py run=<run> merge=true" in proc.stderr


def test_a_pickle_is_refused_with_the_file_named(run, hub, tmp_path):
    assert not list((run / "adapter").glob("*.bin")), "training writes adapter/ without training_args.bin"
    (run / "adapter" / "training_args.bin").write_bytes(b"\x80\x04\x95pickle")
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/pickled", check=False)
    assert proc.returncode == 2
    assert "holds pickle files, refusing to publish: training_args.bin. Loading a pickle runs code" in proc.stderr
    assert len(hub.requests) == before


def test_a_utf16_token_is_refused(run, hub, tmp_path):
    """What PowerShell 5's `>` writes: UTF-16 with a byte order mark; the scan reads it as text too."""
    (run / "adapter" / "NOTES.md").write_bytes("token: hf_".encode("utf-16") + ("a1B2" * 9).encode("utf-16-le"))
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/leaky16", check=False)
    assert proc.returncode == 2
    assert "holds token-like strings, refusing to publish: NOTES.md (utf-16-le text: hf_a1...)" in proc.stderr
    assert len(hub.requests) == before


def test_files_outside_the_allow_list_are_refused_by_name(run, hub, tmp_path):
    (run / "adapter" / "notes.txt").write_text("my notes\n")
    (run / "adapter" / "secrets.tar.gz").write_bytes(b"\x1f\x8b\x08\x00")
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/extra", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "holds files a model repository does not need, refusing to publish: notes.txt, secrets.tar.gz. "
        "Published are only *.safetensors, *.gguf, *.json"
    ) in proc.stderr
    assert len(hub.requests) == before
