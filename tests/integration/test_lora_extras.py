"""LoRA variants through the real entry points, and what LoRA+ and NEFTune change in a training step.

train.py with PiSSA (+ rsLoRA, LoRA+) saves an adapter converted to apply to the original base, which stock peft
reloads as the trained model (its eval loss is the one logged), and export.py merges and verifies it. In process:
LoRA+ moves lora_B `ratio` times further than plain LoRA in the first Adam step; NEFTune changes the training loss
(noisy embeddings) and leaves evaluation as it was.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import compose, run_entry
from tests.integration.test_train import REPEATED, rows, stock_eval_loss
from finetune.data import load as data_load
from finetune.model import base as model_base
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.training import checks, kinds

pytestmark = pytest.mark.slow


def test_pissa_run_reloads_as_trained_and_exports_verified(tmp_path):
    """The wiring train.py adds for PiSSA: the initial adapter saved at the start, the conversion at the end.
    (Every variant's merge, QDoRA's included, is checked in process: tests/unit/test_lora_variants.py.)"""
    run_dir = tmp_path / "run"
    run_entry(
        "train.py",
        "recipe=tiny_lora",
        f"output_dir={run_dir}",
        "lora.init=pissa",
        "lora.use_rslora=true",
        "trainer.loraplus_lr_ratio=4",
        *REPEATED,
    )
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 16 and saved["init_lora_weights"] is True  # rank 2r: a plain LoRA on the original base
    assert not (run_dir / "lora_init").exists()
    logged = [r["eval_loss"] for r in rows(run_dir) if "eval_loss" in r][-1]  # at the last step
    assert stock_eval_loss(run_dir, "tiny_lora") == pytest.approx(logged, abs=2e-4)

    proc = run_entry("export.py", f"run={run_dir}", "merge=true")
    check = json.loads((run_dir / "merged" / "verification.json").read_text())["checks"][0]
    print(f"PiSSA: merged vs {check['reference']}: max |dlogits| {check['max_abs']:.2e}")
    assert check["max_abs"] / check["logit_scale"] <= check["tolerance"] == 1e-4 and "verified" in proc.stdout
    assert "PiSSA initialisation" in (run_dir / "merged" / "README.md").read_text()


def sft_trainer(tmp_path, *overrides):
    """(trainer, model) for a 1-step SFT run of tiny_lora built as train.py builds it."""
    from transformers import set_seed

    cfg = checks.before_weights(
        compose(
            "recipe=tiny_lora",
            "data.max_samples=8",
            "data.max_length=128",
            "data.too_long=truncate",
            "data.eval_fraction=0.25",
            "trainer.max_steps=1",
            "trainer.micro_batch_size=2",
            "trainer.logging_steps=1",
            "trainer.warmup_ratio=0",
            "trainer.learning_rate=1e-3",
            "eval.samples=0",
            f"output_dir={tmp_path}",
            *overrides,
        )
    )
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    prepared = data_load.load(cfg.data, tok)
    model_base.prepare_path(cfg.model, tok)
    set_seed(cfg.seed)
    model = lora.apply_lora(model_base.load_base(cfg.model, cfg.quant), cfg.lora)
    return kinds.build(cfg, model, tok, prepared, tmp_path), model


def lora_tensors(model, which: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if f"lora_{which}" in k}


@pytest.mark.parametrize("ratio", [None, 16])
def test_loraplus_moves_lora_b_ratio_times_further(ratio, tmp_path):
    """B starts at zero, so the first step leaves A unchanged and moves B by lr x sign(grad) (Adam's first
    update): with LoRA+ by lr x ratio."""
    trainer, model = sft_trainer(tmp_path, *([f"trainer.loraplus_lr_ratio={ratio}"] if ratio else []))
    a0, b0 = lora_tensors(model, "A"), lora_tensors(model, "B")
    trainer.train()
    moved_b = max(float((v - b0[k]).abs().max()) for k, v in lora_tensors(model, "B").items())
    assert all(torch.equal(v, a0[k]) for k, v in lora_tensors(model, "A").items())
    assert moved_b == pytest.approx(1e-3 * (ratio or 1), rel=0.02)


def test_neftune_noises_training_not_evaluation(tmp_path):
    losses = {}
    for alpha in (None, 15):
        trainer, _ = sft_trainer(tmp_path / str(alpha), *([f"trainer.neftune_alpha={alpha}"] if alpha else []))
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        first = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
        losses[alpha] = (before, first)
    assert losses[15][0] == pytest.approx(losses[None][0], abs=1e-6)  # evaluation: no noise
    assert abs(losses[15][1] - losses[None][1]) > 1e-4  # the same step on the same batch, with noisy embeddings
