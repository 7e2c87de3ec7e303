"""The RoPE scaling a merged config.json declares, as llama.cpp reads it from a GGUF header (type, factor,
original context; a YaRN attention factor as llama.cpp's multiplier), what llama.cpp cannot run refused with the
fix, and the Modelfile's num_ctx."""

from __future__ import annotations

import math

import pytest

from finetune.ship import gguf_rope, modelfile


def header(tmp_path, config: dict) -> dict:
    import gguf

    path = tmp_path / "h.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    gguf_rope.add(writer, config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if ".rope." in k}


def test_linear_and_yarn_headers(tmp_path):
    linear = {"max_position_embeddings": 16384, "rope_parameters": {"rope_type": "linear", "factor": 4.0}}
    assert header(tmp_path, linear) == {
        "llama.rope.scaling.type": "linear",
        "llama.rope.scaling.factor": 4.0,
        "llama.rope.scaling.original_context_length": 4096,
        "llama.rope.scaling.finetuned": True,
    }
    yarn = {
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 4096,
            "attention_factor": 1.5,
        },
    }
    got = header(tmp_path, yarn)
    assert got["llama.rope.scaling.type"] == "yarn" and got["llama.rope.scaling.original_context_length"] == 4096
    assert got["llama.rope.scaling.attn_factor"] == pytest.approx(1.5 / (0.1 * math.log(8) + 1), rel=1e-6)
    assert header(tmp_path, {"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default"}}) == {}


@pytest.mark.parametrize(
    "scaling, error",
    [
        ({"type": "dynamic", "factor": 4.0, "original_context": 4096}, "llama.cpp has no dynamic RoPE scaling"),
        (
            {"type": "yarn", "factor": 4.0, "original_context": 4096, "beta_fast": 16.0},
            "model.rope_scaling.beta_fast=16: llama.cpp runs Llama's YaRN with beta_fast=32 and beta_slow=1 only",
        ),
    ],
)
def test_what_llama_cpp_cannot_run_is_refused(scaling, error):
    found = gguf_rope.problems(scaling)
    assert len(found) == 1 and error in found[0]


def test_modelfile_sets_num_ctx_to_the_trained_context():
    assert "PARAMETER num_ctx 16384" in modelfile.render("m.gguf", None, "licence", 16384).splitlines()
    assert "num_ctx" not in modelfile.render("m.gguf", None, "licence")


@pytest.mark.slow
def test_export_refuses_a_dynamic_run_for_gguf_before_writing(tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    from tests.conftest import ROOT, compose, run_entry
    from finetune import config

    run = tmp_path / "run"  # a whole run's adapter/ files (only the RoPE setting is what export must refuse)
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    save_file({"lora_A": torch.zeros(2, 2)}, str(run / "adapter" / "adapter_model.safetensors"))
    shutil.copy(ROOT / "data" / "llama2-tokenizer" / "tokenizer.model", run / "adapter")
    (run / "config.yaml").write_text(
        config.to_yaml(compose("recipe=tiny_qlora", "model.rope_scaling.type=dynamic", "model.rope_scaling.factor=2"))
    )
    proc = run_entry("export.py", f"run={run}", "format=gguf", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-2:] == [
        "error: invalid config:",
        "  - model.rope_scaling.type=dynamic: llama.cpp has no dynamic RoPE scaling, so a GGUF would not compute "
        "what was trained; export safetensors (format=safetensors merge=true), or train with "
        "model.rope_scaling.type=linear or yarn",
    ]
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "config.yaml"]
