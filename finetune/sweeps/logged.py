"""What a training run logs to metrics.jsonl (and wandb), per trainer kind: a sweep's metric is checked against it
before the first trial, so a misspelled `eval/loos` is refused at once instead of after a whole trial.

The names are transformers' Trainer's, TRL's for each trainer (SFTTrainer, DPOTrainer, ORPOTrainer, CPOTrainer for
SimPO, KTOTrainer) and our metrics callback's (tokens_per_s, eval_perplexity); eval metrics carry `eval_`.
"""

from __future__ import annotations

import difflib

from finetune.config.methods import METHODS

TRAINER = (
    "loss",
    "grad_norm",
    "learning_rate",
    "epoch",
    "num_tokens",
    "tokens_per_s",
    "time_s",
    "entropy",
    "train_loss",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "total_flos",
)
EVAL = ("loss", "runtime", "samples_per_second", "steps_per_second", "perplexity", "entropy", "num_tokens")


BENCHMARK = "eval_benchmark/"  # metrics.jsonl's prefix of a benchmark score (eval.benchmarks)


def names(kind: str) -> list[str]:
    """Every metrics.jsonl key a run of `kind` logs (with an eval split: the eval_ ones too)."""
    own = METHODS[kind].logs if kind in METHODS else ()
    return list(TRAINER + own) + [f"eval_{n}" for n in EVAL + own]


def as_wandb(key: str) -> str:
    """metrics.jsonl's key as wandb names it: eval_loss -> eval/loss, loss -> train/loss."""
    return "eval/" + key[len("eval_") :] if key.startswith("eval_") else f"train/{key}"


def problem(metric: str, key: str, kind: str, has_eval: bool) -> str | None:
    """Why a sweep's `metric` (read as `key` in metrics.jsonl) can never be read from a run of `kind`, or None."""
    if key.startswith(BENCHMARK):  # scored by the benchmark callback, with or without an eval split; its task and
        return None  # metric were checked against lm_eval's own task when the sweep file was read
    known = names(kind)
    if key not in known:
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        return (
            f"metric {metric}: a trainer.kind={kind} run logs no such metric"
            + (f"; did you mean {as_wandb(near[0])}?" if near else "")
            + f" (it logs {', '.join(as_wandb(k) for k in known)})"
        )
    if key.startswith("eval_") and not has_eval:
        return (
            f"metric {metric}: the trials have no eval split, so nothing logs it; set data.eval_fraction=0.1 "
            "(or data.eval_path=...), or use a train/ metric"
        )
    return None
