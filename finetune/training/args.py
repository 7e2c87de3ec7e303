"""TrainingArguments shared by SFT and DPO, and the callbacks every trainer gets."""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.config import TrainConfig
from finetune.config.methods import METHODS
from finetune.runs import checkpoints
from finetune.runs.metrics import MetricsCallback
from finetune.runtime import console
from finetune.training import samples, tracking


def gradient_checkpointing(cfg: TrainConfig) -> bool:
    """`trainer.gradient_checkpointing`, or by default: on with CUDA (memory), off on a CPU (speed). Off for the
    Trainer under `trainer.memory_budget`: the plan checkpoints its own layers (model/checkpointing.py)."""
    gc = cfg.trainer.gradient_checkpointing
    if cfg.trainer.memory_budget is not None:
        return False
    return torch.cuda.is_available() if gc is None else gc


def checkpointing_args(on: bool) -> dict:
    """The TrainingArguments keys for activation checkpointing: `activation_checkpointing` since transformers 5.2x
    (TRL's configs default the old alias to True, so the new key must be given), `gradient_checkpointing` in 5.17."""
    from dataclasses import fields

    from transformers import TrainingArguments

    name = "activation" if "activation_checkpointing" in {f.name for f in fields(TrainingArguments)} else "gradient"
    return {f"{name}_checkpointing": on, f"{name}_checkpointing_kwargs": {"use_reentrant": False} if on else None}


def liger(cfg: TrainConfig) -> bool:
    """`trainer.liger` where its Triton kernels can run (CUDA); a CPU trains without them (`common_args` says so)."""
    return cfg.trainer.liger and torch.cuda.is_available()


def common_args(cfg: TrainConfig, run_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments shared by SFT and DPO, from the `trainer` sub-config."""
    tcfg, cuda = cfg.trainer, torch.cuda.is_available()
    if tcfg.liger and not cuda:
        console.info(
            "trainer.liger=true: ignored without CUDA (Liger's kernels are Triton GPU kernels); training without them"
        )
    gc = gradient_checkpointing(cfg)
    return dict(
        output_dir=str(checkpoints.staging_dir(run_dir)),  # runs.checkpoints.AtomicCheckpoints moves each out
        per_device_train_batch_size=tcfg.micro_batch_size,
        per_device_eval_batch_size=tcfg.micro_batch_size,
        gradient_accumulation_steps=tcfg.grad_accum,
        learning_rate=tcfg.learning_rate,
        lr_scheduler_type=tcfg.lr_scheduler,
        warmup_steps=tcfg.warmup_ratio,  # a float < 1 is a fraction of the steps (transformers 5)
        weight_decay=tcfg.weight_decay,
        max_grad_norm=tcfg.max_grad_norm,
        optim=tcfg.optim,
        num_train_epochs=tcfg.num_epochs,
        max_steps=tcfg.max_steps,
        logging_steps=tcfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=tcfg.save_steps,
        save_total_limit=None,  # runs.checkpoints.AtomicCheckpoints keeps the last trainer.save_total_limit
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval.every or tcfg.save_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and cfg.model.dtype == "bfloat16",
        fp16=cuda and cfg.model.dtype == "float16",
        use_cpu=not cuda,
        **checkpointing_args(gc),
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used
        dataloader_num_workers=tcfg.dataloader_workers,
        report_to=tracking.report_to(cfg.tracking),  # wandb/tensorboard callbacks log on rank 0 only
        run_name=run_dir.name,
        neftune_noise_alpha=tcfg.neftune_alpha,  # NEFTune (training.extras checks where it may be used)
    )


def callbacks(cfg: TrainConfig, tokenizer, head: list[dict], run_dir: Path) -> list:
    """metrics.jsonl + loss.png, and samples.jsonl for the fixed prompts (`eval.samples`) from `head`."""
    metrics = MetricsCallback(run_dir, perplexity=METHODS[cfg.trainer.kind].token_nll)  # a DPO loss is no token NLL
    return [metrics, *samples.callbacks(cfg, tokenizer, head, run_dir)]
