"""A real 2-rank DDP run over gloo on the CPU: one run directory for both ranks (rank 0's time, broadcast), one
config.yaml, messages printed once, and the same adapter as a 1-process run with the same global batch.

`accelerate launch --cpu --num_processes 2` silently runs ONE process; `--multi_gpu` on a CPU-only machine starts
two ranks and Trainer (use_cpu=True) runs DDP over gloo (DESIGN.md, platform facts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import FAST, ROOT

NAME = "ddp-test"  # data.name: the run dir is outputs/tiny_qlora-ddp-test-<time>


@pytest.mark.slow
def test_two_rank_ddp_shares_one_run_dir_and_matches_one_process(tiny_sft_run):
    before = set(ROOT.glob(f"outputs/tiny_qlora-{NAME}-*"))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(ROOT / "finetune" / "train.py"),
        "recipe=tiny_qlora",
        *FAST,
        "trainer.micro_batch_size=1",
        f"data.name={NAME}",
    ]  # 1 x 2 ranks = the 1-process run's batch of 2
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    new = sorted(set(ROOT.glob(f"outputs/tiny_qlora-{NAME}-*")) - before)
    try:
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        assert len(new) == 1, f"ranks wrote {len(new)} run directories: {new}"
        run = new[0]
        assert (run / "config.yaml").is_file()
        ckpt = run / "checkpoints" / "checkpoint-4"
        assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()  # both ranks, one dir
        assert proc.stdout.count("effective batch: 2 = 1 micro x 1 accumulation x 2 processes") == 1
        assert proc.stdout.count(f"adapter: {run / 'adapter'}") == 1
        steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        assert steps == [1, 2, 3, 4]  # rank 0 logs, once per step

        two, one = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run, tiny_sft_run))
        assert two.keys() == one.keys()
        diff = max((two[k] - one[k]).abs().max().item() for k in two)
        scale = max(one[k].abs().max().item() for k in one)
        print(f"max |adapter(2 ranks) - adapter(1 process)| = {diff:.3g} (largest weight {scale:.3g})")
        assert diff <= 1e-5  # measured 1.0e-6: fp32 sums reduced in another order
    finally:
        for d in new:
            shutil.rmtree(d, ignore_errors=True)
