"""plan.py as a user runs it, a plan for every shipped recipe, and training that stops before loading weights."""

from __future__ import annotations

import time

from tests.conftest import FAST, compose, run_entry
from finetune import config
from finetune.planning import report as plan_report


def test_plan_for_two_24gb_gpus_says_it_does_not_fit_and_what_would():
    proc = run_entry(
        "plan.py",
        "recipe=lora_13b",
        "gpus=2",
        "gpu_memory=24GB",
        "micro_batch=4",
        "max_length=4096",
        "model.path=/nowhere",
        check=False,
    )  # no model, no weights: the architecture is in the config
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "plan: llama2_13b, LoRA r=16 (16-bit base), sft, micro-batch 4 x 4096 tokens" in out
    assert "2 GPUs (ddp)" in out and "GPU: 24.0 GiB each" in out
    assert "base weights (16-bit, 16.000 bits)" in out and "checkpointed layer inputs (40 layers x 16384 tokens)" in out
    assert "verdict: DOES NOT FIT, needs" in out and "has 24.0 (short by" in out
    assert "tokens/s per GPU" in out
    assert "changes that fit (each estimated):" in out and "--num_processes 4" in out
    # no single change fits two 24 GB cards, so changes together are offered too
    assert "quant.mode=nf4 quant.double_quant=true trainer.micro_batch_size=1 trainer.grad_accum=8\n" in out


def test_every_shipped_recipe_gets_a_plan_in_well_under_a_second():
    for name in config.recipe_names():
        cfg = plan_report.load(compose(f"recipe={name}"))
        card = plan_report.card(cfg.plan, cuda=False)  # an H100 80GB when none is present
        start = time.perf_counter()
        fits, text = plan_report.report(cfg, plan_report.setup(cfg, 1, "ddp"), card, cfg.plan.utilization)
        assert time.perf_counter() - start < 1.0, name
        assert f"plan: {cfg.model.name}" in text and "verdict: " in text and " tokens/s per GPU" in text, name
        if name.startswith(("qlora_7b", "qlora_13b", "lora_7b", "lora_13b")):
            assert fits, f"{name} should fit one 80 GB GPU:\n{text}"


def test_training_stops_with_the_breakdown_before_loading_weights(tmp_path):
    out = tmp_path / "run"
    proc = run_entry("train.py", "plan.gpus=1", "plan.gpu_memory=512MB", f"output_dir={out}", *FAST, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert "error: this run cannot fit the GPU memory (plan.strict=false runs it anyway)" in err
    assert "base weights (NF4 + double quant, 4.127 bits)" in err and "verdict: DOES NOT FIT" in err
    assert "changes that fit" in err or "no change the planner knows makes it fit" in err
    assert not out.exists()  # stopped before the run directory, the tokenizer or any weight


def test_a_run_that_fits_exits_0_and_says_so():
    """README: exit code 0 when the run fits, 1 when it does not (scripts branch on it)."""
    proc = run_entry("plan.py", "recipe=qlora_7b", "gpus=1", "gpu_memory=80GB", "model.path=/nowhere", check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verdict: FITS, " in proc.stdout and "DOES NOT FIT" not in proc.stdout
