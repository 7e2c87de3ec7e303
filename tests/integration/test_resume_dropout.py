"""Exact resume where randomness matters: with LoRA dropout on, a run resumed from checkpoint-2 ends with the adapter
of the uninterrupted run. Every tiny recipe trains with dropout 0, where a resume that lost the RNG state (dropout
masks, data order) still ends bitwise right; with dropout 0.1 such a resume ends 5.6e-3 away.

The run also keeps gradient checkpointing on (the CUDA default, off on a CPU) with sample generation mid-training:
the CPU stand-in for tests/gpu/test_eval_chat_gpu.py's samples check (checkpointing recomputes the dropout masks).

No kill and no timing: the uninterrupted run's directory is copied and cut back to what a kill right after
checkpoint-2 leaves (checkpoint-4, adapter/ and the metrics rows after step 2 removed); the same command then
resumes it."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from tests.conftest import FAST, run_entry
from finetune.runs import metrics

pytestmark = pytest.mark.slow
DROPOUT = ["recipe=tiny_lora", *FAST, "lora.dropout=0.1", "trainer.gradient_checkpointing=true", "eval.samples=2"]


def adapter(run):
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_resume_with_dropout_ends_with_the_uninterrupted_adapter(tmp_path):
    whole = tmp_path / "whole"
    run_entry("train.py", *DROPOUT, f"output_dir={whole}")
    samples = [json.loads(line) for line in (whole / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [0, 0, 2, 2, 4, 4]  # generated mid-training with checkpointing on

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")
    shutil.rmtree(cut / "adapter")
    (cut / "loss.png").unlink()
    rows = [r for r in metrics.read(cut / "metrics.jsonl") if r["step"] <= 2 and "train_loss" not in r]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    done = run_entry("train.py", *DROPOUT, f"output_dir={cut}")
    assert f"resuming from {cut / 'checkpoints' / 'checkpoint-2'}" in done.stdout, done.stdout[-3000:]
    want, got = adapter(whole), adapter(cut)
    assert want.keys() == got.keys()
    diff = max((want[k].float() - got[k].float()).abs().max().item() for k in want)
    assert diff <= 1e-6, f"resumed adapter is {diff:.3g} away from the uninterrupted run's"
    losses = lambda run: [r["loss"] for r in metrics.read(run / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(cut) == losses(whole)  # steps 3 and 4 saw the same batches and the same dropout masks
