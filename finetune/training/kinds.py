"""The trainer registry: `trainer.kind` -> the module that checks its config and builds its TRL trainer, as the
method's record (config.methods) names it."""

from __future__ import annotations

import importlib
from pathlib import Path

from finetune.benchmarks import callback as benchmarks
from finetune.config.methods import METHODS
from finetune.data.stats import DataError
from finetune.runs import metrics
from finetune.runtime import console
from finetune.training import progress

# trainer.kind -> its trainer module (finetune/training/<the record's trainer>.py), named by the method's record
TRAINERS = {name: importlib.import_module(f"finetune.training.{m.trainer}") for name, m in METHODS.items()}


def check_data(cfg, prepared) -> None:
    """One DataError for tokenized data the trainer kind cannot learn from (KTO: answers of one kind only), raised
    before any weight loads; trainers without such a check accept any data their encoder made."""
    check = getattr(TRAINERS[cfg.trainer.kind], "data_problems", None)
    if found := (check(cfg, prepared) if check else []):
        raise DataError("; ".join(found))


def build(cfg, model, tokenizer, prepared, run_dir: Path):
    """The TRL trainer for `trainer.kind` over the prepared data, showing our progress bar."""
    with console.datasets_bars(False):  # TRL's own passes over data we already tokenized
        trainer = TRAINERS[cfg.trainer.kind].build(cfg, model, tokenizer, prepared, run_dir)
    progress.use(trainer)
    for cb in [c for c in trainer.callback_handler.callbacks if isinstance(c, metrics.MetricsCallback)]:
        metrics.first(trainer, cb)  # tokens/s, perplexity and resumed counts reach TensorBoard and wandb too
    trainer.add_callback(metrics.LogAtSave())
    benchmarks.attach(trainer, cfg, tokenizer)  # eval.benchmarks: lm_eval tasks during training, logged like eval loss
    return trainer
