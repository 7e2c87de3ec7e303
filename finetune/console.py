"""What a run prints: one clear error instead of a traceback for bad input, and rank-0-only messages."""
from __future__ import annotations

import functools
import os
import sys

from finetune.config import ConfigError


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def info(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


def user_errors() -> tuple[type[Exception], ...]:
    from finetune.chat_format import DialogError
    from finetune.data import DataError
    from finetune.hub import PublishError
    from finetune.plan_report import PlanError

    merge = sys.modules.get("finetune.merge")  # only an imported merge raises MergeError; skip torch's import cost
    return (ConfigError, DataError, DialogError, PlanError, PublishError) + ((merge.MergeError,) if merge else ())


def exit_cleanly(fn):
    """Bad input (config, data) ends the process with its message and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as exc:
            if is_main():
                print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def report_start(trainer, cfg, stats, run_dir, resume) -> None:
    """Effective batch, data counts and where the run goes, once."""
    a = trainer.args
    world = a.world_size
    effective = a.per_device_train_batch_size * a.gradient_accumulation_steps * world
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    info(f"run: {run_dir}\n"
         f"model: {cfg.model.name} ({cfg.model.path}), quant={cfg.quant.mode}, LoRA r={cfg.lora.r}, "
         f"{trainable:,} trainable parameters\n"
         f"data: {cfg.data.name}: {stats.summary()}\n"
         f"effective batch: {effective} = {a.per_device_train_batch_size} micro x "
         f"{a.gradient_accumulation_steps} accumulation x {world} processes"
         + (f"\nresuming from {resume}" if resume else ""))
