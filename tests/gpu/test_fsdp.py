"""FSDP + QLoRA through `accelerate launch --config_file launch/accelerate/fsdp_qlora.yaml`, one process on one GPU:
the real loading path (no device_map, 4-bit storage in the compute dtype, no fp32 upcast) on the tiny model and
on a 7B-shaped random-init model. FSDP does not run on a CPU through accelerate (FSDP1 raises, FSDP2 silently
falls back to DDP), so this is checked on a GPU machine only:

    .venv/bin/pytest -x -q -s tests/gpu/test_fsdp.py       # < 4 minutes on one H100, most of it writing the 7B
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("FSDP through accelerate needs CUDA", allow_module_level=True)

SMALL = [
    "data.max_samples=16",
    "data.max_length=256",
    "data.too_long=truncate",
    "data.eval_fraction=0",
    "trainer.max_steps=2",
    "trainer.micro_batch_size=1",
    "trainer.grad_accum=1",
    "trainer.logging_steps=1",
    "trainer.save_steps=1",
    "trainer.optim=adamw_torch",
]  # paged 8-bit AdamW fails on FSDP-QLoRA saves (peft)


def fsdp_run(out, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch" / "accelerate" / "fsdp_qlora.yaml"),
        "--num_processes",
        "1",
        str(ROOT / "finetune" / "train.py"),
        *overrides,
        *SMALL,
        f"output_dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ})
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def check_run(out, proc) -> list[float]:
    from safetensors.torch import load_file

    assert "effective batch: 1 = 1 micro x 1 accumulation x 1 processes" in proc.stdout
    weights = load_file(out / "adapter" / "adapter_model.safetensors")  # gathered from FSDP into one file
    assert weights and all("lora_" in k for k in weights)
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "checkpoints" / ".incomplete").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    return losses


def test_fsdp_qlora_tiny(tmp_path):
    out = tmp_path / "tiny"
    proc = fsdp_run(out, "recipe=tiny_qlora", "model.dtype=bfloat16")  # float32 is refused under FSDP (bf16 compute)
    print("tiny FSDP-QLoRA losses:", check_run(out, proc))


def test_fsdp_qlora_7b_shaped_random_init(tmp_path):
    out = tmp_path / "7b"
    liger = importlib.util.find_spec("liger_kernel") is not None  # the recipe turns Liger on; run it as shipped
    proc = fsdp_run(
        out,
        "recipe=qlora_7b",
        "model=llama2_7b",
        "model.random_init=true",
        "model.tokenizer=data/llama2-tokenizer",
        f"trainer.liger={str(liger).lower()}",
    )
    print("7B-shaped FSDP-QLoRA losses:", check_run(out, proc))
