"""`eval.benchmarks=[...]` during training: lm_eval tasks on the model being trained every `eval.benchmark_steps`
optimizer steps and at the end, logged through the Trainer like eval loss (metrics.jsonl as
eval_benchmark/<task>/<metric>; wandb and TensorBoard as eval/benchmark/<task>/<metric>)."""

from __future__ import annotations

from transformers import TrainerCallback

from finetune.benchmarks import report, runner, tasks
from finetune.benchmarks.options import BenchmarksConfig
from finetune.runtime import console, dist


class BenchmarkCallback(TrainerCallback):
    """Every rank scores (a model sharded or replicated across ranks runs its forwards on all of them); the
    Trainer's log keeps rank 0's numbers. `trainer` is held to log through it, as TRL's own callbacks do."""

    def __init__(self, trainer, tokenizer, bcfg: BenchmarksConfig, chat: bool, every: int, batch_size: int):
        self.trainer, self.tokenizer, self.bcfg, self.chat = trainer, tokenizer, bcfg, chat
        self.every, self.batch_size = every, batch_size
        self.last_step = -1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if (self.every and state.global_step % self.every == 0) or state.global_step >= state.max_steps:
            self.score(state, model)

    def score(self, state, model) -> None:
        if state.global_step == self.last_step:
            return
        self.last_step = state.global_step
        training = model.training
        scores = runner.evaluate(model, self.tokenizer, self.bcfg, self.chat, self.batch_size)
        model.train(training)  # lm_eval's wrapper put the model in eval mode
        self.trainer.log(
            {
                report.log_key(r["task"], r["metric"]): r["tuned"]
                for r in report.rows(None, scores)
                if r["tuned"] is not None
            }
        )


def config_of(ecfg) -> BenchmarksConfig:
    """The benchmark settings in a training config's `eval` section."""
    return BenchmarksConfig(tasks=list(ecfg.benchmarks), limit=ecfg.benchmark_limit)


def check(ecfg) -> list[str]:
    """Unknown tasks, lm_eval missing, a stock task while offline: before any weights load (train.py, sweeps)."""
    if not ecfg.benchmarks:
        return []
    problems = (
        []
        if not ecfg.benchmark_steps or ecfg.benchmark_steps > 0
        else [
            f"eval.benchmark_steps={ecfg.benchmark_steps}: give a positive number of optimizer steps, or null (the end)"
        ]
    )
    try:
        tasks.check(list(ecfg.benchmarks), None)
    except tasks.BenchmarkError as exc:
        problems.append(str(exc).replace("benchmarks:", "eval.benchmarks:", 1))
    return problems


def attach(trainer, cfg, tokenizer) -> None:
    """Add the callback when `eval.benchmarks` names tasks (not under FSDP: its root parameters stay sharded
    outside the wrapped forward, so lm_eval's generate cannot run mid-training, as for eval.samples)."""
    if cfg.eval.benchmarks and dist.launched_sharding() == "fsdp":
        console.info(
            f"eval.benchmarks: off under FSDP; after training run `python finetune/evaluate.py "
            f"run=<run> benchmarks=[{','.join(cfg.eval.benchmarks)}]`"
        )
    elif cfg.eval.benchmarks:
        trainer.add_callback(
            BenchmarkCallback(
                trainer,
                tokenizer,
                config_of(cfg.eval),
                cfg.data.adapter != "text",
                cfg.eval.benchmark_steps or 0,
                cfg.trainer.micro_batch_size,
            )
        )
