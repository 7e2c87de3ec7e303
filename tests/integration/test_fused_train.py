"""`trainer.fused_lora=true` end to end on the tiny model: train.py trains through the fused layers, and stock peft
reloads the saved adapter and reproduces the eval loss the fused model logged. With `trainer.memory_budget`, the
planner's per-layer checkpointing plan is printed and trained with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_entry
from tests.integration.test_train import REPEATED, rows, stock_eval_loss

# 683.5MB lies between the planner's totals for one and for two tiny layers keeping their activations
BUDGET = ("trainer.memory_budget=683.5MB", "memory plan: 1 of 2 layers keep their activations, layer 0 checkpointed")


@pytest.mark.slow
@pytest.mark.parametrize("recipe,base,budget", [("tiny_lora", "16-bit", None), ("tiny_qlora", "4-bit", BUDGET)])
def test_fused_lora_trains_and_stock_peft_reloads_the_adapter(recipe, base, budget, tmp_path):
    run_dir = tmp_path / recipe
    proc = run_entry(
        "train.py",
        f"recipe={recipe}",
        f"output_dir={run_dir}",
        "trainer.fused_lora=true",
        *REPEATED,
        *budget[:1] if budget else (),
    )
    assert f"fused LoRA: q/k/v, o and SwiGLU MLP of 2 layers over the {base} base" in proc.stdout
    assert budget is None or budget[1] in proc.stdout

    losses = [r["loss"] for r in rows(run_dir) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.25, losses
    first = load_file(run_dir / "checkpoints/checkpoint-4/adapter_model.safetensors")
    final = load_file(run_dir / "adapter/adapter_model.safetensors")
    assert first.keys() == final.keys() and len(final) == 2 * 7 * 2  # peft's own names, every projection
    assert not [k for k in final if torch.equal(first[k], final[k])]  # every A and B trained

    logged = [r["eval_loss"] for r in rows(run_dir) if "eval_loss" in r]
    assert stock_eval_loss(run_dir, recipe) == pytest.approx(logged[-1], abs=2e-4)
