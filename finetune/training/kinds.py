"""The trainer registry: `trainer.kind` -> the module that checks its config and builds its TRL trainer."""
from __future__ import annotations

from pathlib import Path

from finetune.benchmarks import callback as benchmarks
from finetune.runs import metrics
from finetune.runtime import console
from finetune.training import dpo, kto, orpo, progress, sft, simpo

TRAINERS = {"sft": sft, "dpo": dpo, "orpo": orpo, "simpo": simpo, "kto": kto}


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
