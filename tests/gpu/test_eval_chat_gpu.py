"""Evaluation and chat on a GPU: samples generated mid-training with gradient checkpointing on (the CUDA default),
a QLoRA run chatted with in 4-bit on CUDA, and evaluate.py's held-out loss equal to the trainer's eval_loss:

    .venv/bin/pytest -x -q -s tests/gpu/test_eval_chat_gpu.py      # about 1 minute on one H100
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import FAST, run_entry
from finetune.runs import metrics

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("the CUDA paths of samples, chat and evaluate need a GPU", allow_module_level=True)


def test_samples_chat_and_evaluate_on_cuda(tmp_path):
    run = tmp_path / "run"
    run_entry("train.py", "recipe=tiny_qlora", f"output_dir={run}", *FAST)
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 2, 4] and len(rows) == 12

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n{"prompt": "Name a colour.", "system": "Be brief."}\n')
    proc = run_entry(
        "chat.py", f"run={run}", f"prompts={prompts}", f"out={tmp_path / 'answers.jsonl'}", "generate.max_new_tokens=8"
    )
    print(proc.stdout.strip().splitlines()[0])
    assert "quant=nf4, cuda:0" in proc.stdout
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 2

    run_entry("evaluate.py", f"run={run}", "base=false")
    (trained,) = json.loads((run / "eval" / "oasst-eval.json").read_text())["results"]
    last_eval = [r for r in metrics.read(run / "metrics.jsonl") if "eval_loss" in r][-1]
    print("evaluate.py held-out loss", trained["loss"], "trainer eval_loss", last_eval["eval_loss"])
    assert trained["loss"] == pytest.approx(last_eval["eval_loss"], abs=1e-3)
