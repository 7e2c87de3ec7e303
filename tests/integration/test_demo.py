"""`make demo` as a user runs it, shortened: the Makefile target runs `python -m finetune.demo`; here with extra
overrides for both training runs (2 steps, little data), so its three steps (QLoRA SFT, DPO from that adapter,
verified merged export) and its closing summary run end to end in about a minute of CPU."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
SHORT = [
    "trainer.max_steps=2",
    "trainer.save_steps=2",
    "trainer.logging_steps=1",
    "data.max_samples=48",
    "eval.samples=0",
]


def test_make_demo_runs_the_python_module():
    dry = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"^\S*python -m finetune\.demo$", dry.stdout, re.M), dry.stdout


def test_demo_trains_sft_then_dpo_from_it_then_exports_verified():
    proc = subprocess.run(
        [sys.executable, "-m", "finetune.demo", *SHORT], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    found = re.search(r"SFT adapter:\s+(\S+)/sft/adapter", proc.stdout)
    out = ROOT / found.group(1) if found else None
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert [t for t in ("=== 1/3 SFT", "=== 2/3 DPO", "=== 3/3 Export") if t in proc.stdout] == [
            "=== 1/3 SFT",
            "=== 2/3 DPO",
            "=== 3/3 Export",
        ]
        sft, dpo = out / "sft", out / "dpo"
        assert (sft / "adapter" / "adapter_model.safetensors").is_file()
        dpo_cfg = (dpo / "config.yaml").read_text()
        assert (
            f"init_adapter: {sft / 'adapter'}" in dpo_cfg or f"init_adapter: {found.group(1)}/sft/adapter" in dpo_cfg
        )  # DPO continues the SFT adapter
        [check] = json.loads((dpo / "merged" / "verification.json").read_text())["checks"]
        assert check["reference"] == "the adapter model as trained" and check["max_abs"] < 1e-4
        for line in ("SFT adapter:", "DPO adapter:", "merged model:", "Try it:", "Evaluate it:"):
            assert line in proc.stdout
        assert "its answers are noise" in proc.stdout  # the demo says what the toy is
        steps = [
            json.loads(r)["step"]
            for r in (dpo / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(r) and "train_loss" not in json.loads(r)
        ]
        assert steps == [1, 2]  # the overrides reached the run
    finally:
        if out is not None and out.parent == ROOT / "outputs" and out.name.startswith("demo-"):
            shutil.rmtree(out, ignore_errors=True)
    assert Path(found.group(1)).parts[0] == "outputs"
