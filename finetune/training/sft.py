"""Supervised fine-tuning through TRL's SFTTrainer, configured by SFTConfig and callbacks only."""

from __future__ import annotations

from pathlib import Path

from finetune.config import TrainConfig
from finetune.model import fused_layers
from finetune.training.args import callbacks, common_args, liger
from finetune.training.extras import optimizers


def build(cfg: TrainConfig, model, tokenizer, prepared, run_dir: Path):
    """TRL's SFTTrainer over pre-tokenized `input_ids` + `assistant_masks` (labels = assistant tokens + EOS)."""
    from trl import SFTConfig, SFTTrainer

    train_ds, eval_ds = prepared.train, prepared.eval
    args = SFTConfig(
        **common_args(cfg, run_dir, eval_ds is not None),
        max_length=cfg.data.max_length,
        packing=cfg.trainer.packing,
        padding_free=cfg.trainer.packing,
        use_liger_kernel=liger(cfg),
        # Liger rebinds each MLP instance's forward when training starts: the fused MLP keeps its own SwiGLU
        liger_kernel_config={"swiglu": False} if liger(cfg) and fused_layers.fused(model) else None,
        activation_offloading=cfg.trainer.activation_offloading,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer.hf,
        callbacks=callbacks(cfg, tokenizer, prepared.head, run_dir),
        optimizers=optimizers(cfg, model, args),
    )


def check(cfg) -> list[str]:
    """SFT has no keys of its own beyond the shared ones."""
    return []
