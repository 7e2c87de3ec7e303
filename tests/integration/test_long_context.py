"""Past the original context, end to end on the tiny Llama 2 given a 256-token pretrained context and linear RoPE
scaling x4 (1,024 tokens), with LongLoRA's trainable embeddings and norms: train.py trains on conversations longer
than 256 tokens and resumes to the uninterrupted adapter; export.py writes merged/ and a GGUF that carry the
scaling, and llama.cpp's logits past position 256 match merged/ (linear and YaRN); the Modelfile sets num_ctx and
the card states the context; evaluate.py's long-context mode scores positions up to 1,023."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_entry
from finetune.runs import metrics

pytestmark = pytest.mark.slow
ORIGINAL, CONTEXT = 256, 1024


def long_run(tmp_path_factory) -> list[str]:
    base = tmp_path_factory.getbasetemp() / "tiny256"  # its own random base: the shared one keeps 4096
    return [
        "recipe=tiny_qlora",
        f"model.path={base}",
        f"model.arch.max_position_embeddings={ORIGINAL}",
        "model.rope_scaling.type=linear",
        "model.rope_scaling.factor=4",
        "lora.train_embeddings_and_norms=true",
        "data.max_samples=16",
        f"data.max_length={CONTEXT}",
        "data.too_long=truncate",
        "data.eval_fraction=0.25",
        "trainer.max_steps=4",
        "trainer.micro_batch_size=2",
        "trainer.logging_steps=1",
        "trainer.save_steps=2",
        "eval.samples=0",
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    args = long_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("long") / "whole"
    proc = run_entry("train.py", *args, f"output_dir={run}")
    return run, args, proc


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    run = tmp_path_factory.mktemp("long_export") / "long"
    shutil.copytree(trained[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    proc = run_entry(
        "export.py",
        f"run={run}",
        "format=gguf",
        "gguf.type=f32",
        "verify.prompts=2",
        "verify.max_new_tokens=4",
        "gguf.sequences=2",
    )
    return run, proc


def test_trains_on_sequences_past_the_original_context(trained):
    run, _, proc = trained
    longest = int(proc.stdout.split("tokens per example:")[1].split("max ")[1].split()[0].rstrip(";"))
    assert ORIGINAL < longest <= CONTEXT  # positions past 256 were trained
    assert "modules_to_save" in (run / "adapter" / "adapter_config.json").read_text()
    assert "base_model.model.model.embed_tokens.weight" in load_file(run / "adapter" / "adapter_model.safetensors")


def test_resume_ends_with_the_uninterrupted_adapter(trained, tmp_path):
    whole, args, _ = trained
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")
    shutil.rmtree(cut / "adapter")
    (cut / "loss.png").unlink(missing_ok=True)
    rows = [r for r in metrics.read(cut / "metrics.jsonl") if r["step"] <= 2 and "train_loss" not in r]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run_entry("train.py", *args, f"output_dir={cut}")
    assert f"resuming from {cut / 'checkpoints' / 'checkpoint-2'}" in done.stdout, done.stdout[-3000:]
    want, got = (
        load_file(whole / "adapter" / "adapter_model.safetensors"),
        load_file(cut / "adapter" / "adapter_model.safetensors"),
    )
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_export_carries_the_trained_context(exported):
    run, proc = exported
    cfg = json.loads((run / "merged" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == CONTEXT
    assert cfg["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    merge_check = json.loads((run / "merged" / "verification.json").read_text())["checks"][0]
    assert merge_check["max_abs"] / merge_check["logit_scale"] < 1e-4
    assert "6 fully trained tensors (embeddings, norms) copied" in proc.stdout
    check = json.loads((run / "gguf" / "verification.json").read_text())["files"][f"{run.name}.f32.gguf"]
    assert check["ok"]
    from gguf import GGUFReader

    fields = GGUFReader(str(run / "gguf" / f"{run.name}.f32.gguf")).fields
    value = lambda key: fields[key].contents()  # noqa: E731
    assert (
        value("llama.rope.scaling.type"),
        value("llama.rope.scaling.factor"),
        value("llama.rope.scaling.original_context_length"),
        value("llama.context_length"),
    ) == ("linear", 4.0, ORIGINAL, CONTEXT)
    assert f"PARAMETER num_ctx {CONTEXT}" in (run / "gguf" / "Modelfile.f32").read_text().splitlines()
    for card in ("adapter", "merged", "gguf"):
        assert (
            f"| trained context | {CONTEXT} ({ORIGINAL} x 4, linear RoPE scaling) |"
            in (run / card / "README.md").read_text()
        ), card


def late_logits_gap(merged, gguf_file, ids) -> tuple[float, float]:
    """max |dlogits| / max |logits| between transformers on `merged` and llama.cpp on `gguf_file`, over the
    positions before and past the original context."""
    from transformers import AutoModelForCausalLM

    from finetune.ship import llamacpp

    net = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = net(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = llamacpp.load(gguf_file, CONTEXT)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    gap = lambda a, b: float(np.abs(a - b).max() / np.abs(a).max())  # noqa: E731
    return gap(ref[:ORIGINAL], got[:ORIGINAL]), gap(ref[ORIGINAL:], got[ORIGINAL:])


@pytest.mark.parametrize("scaling", ["linear", "yarn"])
def test_llama_cpp_logits_past_the_original_context_match_merged(scaling, exported, tmp_path):
    """llama.cpp on the exported GGUF; for YaRN, the same weights with a YaRN config.json (attention factor set)
    written through the same GGUF writer."""
    import sentencepiece as spm

    from finetune.ship import gguf, long_context

    run, _ = exported
    merged, gguf_file = run / "merged", run / "gguf" / f"{run.name}.f32.gguf"
    if scaling == "yarn":
        merged = tmp_path / "yarn"
        shutil.copytree(run / "merged", merged)
        cfg = json.loads((merged / "config.json").read_text())
        params = {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": ORIGINAL,
            "attention_factor": 1.3,
        }
        cfg.update(rope_parameters=params, rope_scaling={k: v for k, v in params.items() if k != "rope_theta"})
        (merged / "config.json").write_text(json.dumps(cfg))
        gguf_file = tmp_path / "yarn.f32.gguf"
        gguf.write(merged, gguf_file, "f32", "yarn")
    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    ids = [1] + long_context.document_ids(sp)[: CONTEXT - 124]  # 900 tokens: positions 256-899 past the original
    early, late = late_logits_gap(merged, gguf_file, ids)
    print(f"{scaling}: llama.cpp vs merged, relative max |dlogits| before {ORIGINAL}: {early:.2e}, past: {late:.2e}")
    assert early < 1e-4 and late < 1e-4  # measured 4e-7; a GGUF without the scaling is 4e-3 away past 256


def test_evaluate_long_context_scores_every_position(exported):
    run, _ = exported
    proc = run_entry(
        "evaluate.py",
        f"run={run}",
        f"long_context.length={CONTEXT}",
        "long_context.windows=1",
        "long_context.passkeys=2",
    )
    out = json.loads((run / "eval" / f"long_context-{CONTEXT}.json").read_text())
    assert out["original_context"] == ORIGINAL and out["context"] == f"{CONTEXT} ({ORIGINAL} x 4, linear RoPE scaling)"
    assert [r["model"] for r in out["results"]] == ["base llama2_tiny (nf4)", f"{run.name} (adapter)"]
    for r in out["results"]:
        assert r["last_position"] == CONTEXT - 1 and np.isfinite(r["perplexity"]) and r["perplexity"] > 1
        assert np.isfinite(r["perplexity_past_original"]) and r["passkey_logprob"] < 0
        assert 0 <= r["passkey_exact"] <= 2
    assert f"{run.name} (adapter)" in proc.stdout and f"past {ORIGINAL}" in proc.stdout
