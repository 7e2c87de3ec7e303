"""A sweep ranked by a benchmark: `metric.name: benchmark/<task>/<metric>` (or eval/benchmark/..., the name wandb
shows) in the sweep file. Every trial then scores <task> at its end (`eval.benchmarks=[<task>]`, the training
callback) and logs eval_benchmark/<task>/<metric> to its metrics.jsonl, which the sweep ranks by; online, wandb
gets the same value as eval/benchmark/<task>/<metric>."""

from __future__ import annotations

from finetune.benchmarks import tasks
from finetune.config import ConfigError

PREFIXES = ("benchmark/", "eval/benchmark/")


def parse(metric: str) -> tuple[str, str] | None:
    """(task, metric) of a benchmark metric name; None for any other metric."""
    for prefix in PREFIXES:
        if metric.startswith(prefix):
            task, _, name = metric[len(prefix) :].partition("/")
            return task, name
    return None


def metric_names(task) -> list[str]:
    """The metric names a task logs: lm_eval's `metric` for the default filter, `metric,filter` otherwise."""
    metrics = [m["metric"] for m in task.config.metric_list or []]
    filters = [f["name"] for f in task.config.filter_list or []] or ["none"]
    return [m if f == "none" else f"{m},{f}" for m in metrics for f in filters]


def prepare(sweep) -> str | None:
    """For a benchmark metric: check the task and metric exist, make every trial score the task at its end, and
    name the metric as the trials log it. Returns a line saying so (None for other metrics)."""
    found = parse(sweep.metric)
    if found is None:
        return None
    task, name = found
    built = tasks.build([task], None)
    valid = [n for t in built.tasks for n in metric_names(t)]
    if name not in valid:
        raise ConfigError(
            [
                f"{sweep.path}: metric.name {sweep.metric}: task {task} logs "
                f"{', '.join(valid)}; write benchmark/{task}/<one of them>"
            ]
        )
    sweep.metric = f"eval/benchmark/{task}/{name}"  # metrics.jsonl: eval_benchmark/<task>/<metric>
    if "eval.benchmarks" not in sweep.fixed and "eval.benchmarks" not in sweep.space:
        sweep.fixed["eval.benchmarks"] = f"[{task}]"
    return (
        f"each trial scores {task} at its end (eval.benchmarks={sweep.fixed.get('eval.benchmarks')}, "
        f"eval.benchmark_limit={sweep.fixed.get('eval.benchmark_limit', 'null')}) and is ranked by {name}"
    )
