"""Builders for TRL's trainers, configured through SFTConfig/DPOConfig, collators and callbacks only."""
from __future__ import annotations

from pathlib import Path

import torch

from finetune import tracking
from finetune import checkpoints
from finetune.config import TrainConfig
from finetune.metrics import MetricsCallback


def gradient_checkpointing(cfg: TrainConfig) -> bool:
    """`trainer.gradient_checkpointing`, or by default: on with CUDA (memory), off on a CPU (speed)."""
    gc = cfg.trainer.gradient_checkpointing
    return torch.cuda.is_available() if gc is None else gc


def liger(cfg: TrainConfig) -> bool:
    """`trainer.liger` where its Triton kernels can run (CUDA); a CPU trains without them."""
    return cfg.trainer.liger and torch.cuda.is_available()


def common_args(cfg: TrainConfig, run_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments shared by SFT and DPO, from the `trainer` sub-config."""
    t, cuda = cfg.trainer, torch.cuda.is_available()
    gc = gradient_checkpointing(cfg)
    return dict(
        output_dir=str(checkpoints.staging_dir(run_dir)),  # checkpoints.AtomicCheckpoints moves each one out
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a fraction of the steps (transformers 5)
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # checkpoints.AtomicCheckpoints keeps the last trainer.save_total_limit
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval.every or t.save_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and cfg.model.dtype == "bfloat16",
        fp16=cuda and cfg.model.dtype == "float16",
        use_cpu=not cuda,
        gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used
        dataloader_num_workers=t.dataloader_workers,
        report_to=tracking.report_to(cfg.tracking),  # wandb/tensorboard callbacks log on rank 0 only
        run_name=run_dir.name,
    )


def callbacks(cfg: TrainConfig, tokenizer, run_dir: Path) -> list:
    """metrics.jsonl + loss.png, and samples.jsonl for the fixed prompts (`eval.samples`)."""
    from finetune import samples

    metrics = MetricsCallback(run_dir, perplexity=cfg.trainer.kind == "sft")  # a DPO loss is no token NLL
    return [metrics, *samples.callbacks(cfg, tokenizer, run_dir)]


def build_sft(cfg: TrainConfig, model, tokenizer, train_ds, eval_ds, run_dir: Path):
    """TRL's SFTTrainer over pre-tokenized `input_ids` + `assistant_masks` (labels = assistant tokens + EOS)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **common_args(cfg, run_dir, eval_ds is not None),
        max_length=cfg.data.max_length,
        packing=cfg.trainer.packing,
        padding_free=cfg.trainer.packing,
        use_liger_kernel=liger(cfg),
        activation_offloading=cfg.trainer.activation_offloading,
    )
    return SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer.hf, callbacks=callbacks(cfg, tokenizer, run_dir))


def build(cfg: TrainConfig, model, tokenizer, train_ds, eval_ds, run_dir: Path):
    if cfg.trainer.kind == "sft":
        return build_sft(cfg, model, tokenizer, train_ds, eval_ds, run_dir)
    if cfg.trainer.kind == "dpo":
        from finetune import dpo

        return dpo.build_dpo(cfg, model, tokenizer, train_ds, eval_ds, run_dir)
    raise ValueError(f"trainer.kind={cfg.trainer.kind}: not available in this build")
