"""A wandb sweep file (launch/sweeps/*.yaml), read and checked, and its search as trial proposals.

The file is wandb's own sweep format, so `wandb sweep FILE` takes it unchanged; this reads what a local sweep
needs: method (grid | random | bayes), metric {name, goal}, parameters named by Hydra dotted keys, command,
run_cap. Grid walks the `values` in file order; random and bayes ask Optuna (RandomSampler; TPESampler, a
Bayesian optimizer) with every recorded trial replayed first, so a proposal depends only on the trials file
and a sweep resumes from it.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune.config import ConfigError

METHODS = ("grid", "random", "bayes")
MACROS = ("env", "interpreter", "program", "args_no_hyphens")
NUMERIC = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "q_uniform")
ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")  # wandb's agent expands these inside any command item


@dataclass
class Sweep:
    path: Path
    method: str
    metric: str  # as the Trainer logs it to wandb, e.g. eval/loss
    goal: str  # minimize | maximize
    command: list[str]
    program: str | None
    run_cap: int | None
    fixed: dict[str, Any] = field(default_factory=dict)  # `value:` parameters and command-line overrides
    space: dict[str, Any] = field(default_factory=dict)  # swept key -> optuna distribution
    overrides: dict[str, str] = field(default_factory=dict)  # key=value from the command line: part of its identity

    @property
    def metrics_key(self) -> str:
        """The metric's name in metrics.jsonl: the Trainer logs eval_loss, which its wandb callback names eval/loss."""
        if self.metric.startswith("eval/"):
            return "eval_" + self.metric[len("eval/") :]
        return self.metric[len("train/") :] if self.metric.startswith("train/") else self.metric


def load(path: Path, overrides: dict[str, str]) -> Sweep:
    """The sweep file, checked; `overrides` (key=value from the command line) fix those keys for every trial."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read it as YAML ({exc})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a wandb sweep mapping (method, metric, parameters, command)"])
    problems: list[str] = []
    sweep, params = header(Path(path), raw, problems)
    sweep.command = check_command(path, raw.get("command"), sweep.program, problems)
    for key, spec in params.items():
        if key in overrides:
            continue
        if not isinstance(spec, dict):
            problems.append(f"{path}: parameters.{key}: expected a mapping with value, values or min/max")
        elif "value" in spec:
            sweep.fixed[key] = spec["value"]
        else:
            dist = distribution(f"{path}: parameters.{key}", spec, sweep.method, problems)
            if dist is not None:
                sweep.space[key] = dist
    sweep.fixed.update(overrides)
    sweep.overrides = dict(overrides)
    if not sweep.space and not problems:
        problems.append(f"{path}: parameters: nothing left to sweep (every key has one value)")
    if problems:
        raise ConfigError(problems)
    return sweep


def header(path: Path, raw: dict, problems: list[str]) -> tuple[Sweep, dict]:
    """The sweep without its command and parameters (method, metric, program, run_cap), and the parameters' mapping;
    what is wrong goes to `problems`."""
    method, metric = raw.get("method"), raw.get("metric") or {}
    if method not in METHODS:
        problems.append(f"{path}: method: {method!r}; use one of {', '.join(METHODS)}")
    if not isinstance(metric, dict) or not metric.get("name") or metric.get("goal") not in ("minimize", "maximize"):
        problems.append(f"{path}: metric: give `name` (e.g. eval/loss) and `goal` (minimize or maximize)")
        metric = {}
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        problems.append(f"{path}: parameters: none given; name each by its Hydra key, e.g. trainer.learning_rate")
        params = {}
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        problems.append(f"{path}: run_cap: {run_cap!r}; use a positive integer")
    sweep = Sweep(path, method, metric.get("name", ""), metric.get("goal", ""), [], raw.get("program"), run_cap)
    return sweep, params


def check_command(path: Path, command: Any, program: str | None, problems: list[str]) -> list[str]:
    fix = "command: [${env}, accelerate, launch, finetune/train.py, ${args_no_hyphens}], one item per word"
    if not isinstance(command, list) or "${args_no_hyphens}" not in command:
        problems.append(f"{path}: command: must pass the trial's values as Hydra key=value overrides; use {fix}")
        return []
    for item in command:
        if not isinstance(item, str) or " " in item:
            problems.append(f"{path}: command item {item!r}: one word per item ({fix})")
        elif item.startswith("${") and item[2:-1] not in MACROS and not ENVVAR.fullmatch(item):
            problems.append(
                f"{path}: command item {item}: a local sweep renders {', '.join(MACROS)} and "
                "${envvar:NAME}; Hydra needs ${args_no_hyphens} (key=value)"
            )
    if "${program}" in command and not program:
        problems.append(f"{path}: command uses ${{program}} but the file has no `program:`")
    return list(command)


def distribution(where: str, spec: dict, method: str, problems: list[str]):
    """The Optuna distribution for one wandb parameter spec, or None after recording the problem."""
    from optuna.distributions import CategoricalDistribution

    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            problems.append(f"{where}.values: give a non-empty list")
            return None
        return CategoricalDistribution(values)
    if method == "grid":
        problems.append(f"{where}: grid needs `values: [...]` (or one `value:`) for every parameter")
        return None
    return numeric(where, spec, problems)


def numeric(where: str, spec: dict, problems: list[str]):
    """The Optuna distribution for a min/max parameter spec (wandb's distribution names), or None after recording
    the problem."""
    from optuna.distributions import FloatDistribution, IntDistribution

    kind = spec.get("distribution")
    lo, hi = spec.get("min"), spec.get("max")
    for name, v in (("min", lo), ("max", hi), ("q", spec.get("q", 1))):
        if isinstance(v, str):
            problems.append(f"{where}.{name}: {v!r} is text: YAML reads 1e-5 as a string; write 1.0e-5")
            return None
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or lo >= hi:
        problems.append(f"{where}: give numbers min < max (or `values: [...]`)")
        return None
    if kind is None:
        kind = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if kind not in NUMERIC:
        problems.append(f"{where}.distribution: {kind!r}; a local sweep supports {', '.join(NUMERIC)} and values")
        return None
    if kind == "log_uniform_values" and lo <= 0:
        problems.append(f"{where}.min: {lo}; a log distribution needs min > 0")
        return None
    if kind == "int_uniform":
        return IntDistribution(int(lo), int(hi))
    if kind == "log_uniform":  # wandb: min and max are natural logs of the bounds
        return FloatDistribution(math.exp(lo), math.exp(hi), log=True)
    if kind == "q_uniform":
        return FloatDistribution(lo, hi, step=spec.get("q", 1.0))
    return FloatDistribution(lo, hi, log=True)  # log_uniform_values


def size(sweep: Sweep) -> int | None:
    """The number of grid points, or None for random and bayes (unbounded)."""
    return math.prod(len(d.choices) for d in sweep.space.values()) if sweep.method == "grid" else None


def propose(sweep: Sweep, records: list[dict], total: int, seed: int) -> dict[str, Any]:
    """The swept values of the next trial, given every recorded trial (finished, failed or running)."""
    if sweep.method == "grid":
        return dict(zip(sweep.space, grid_points(sweep)[len(records)]))
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed += len(records)  # deterministic given the history, and different at every step
    if sweep.method == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:  # a quarter of the budget explores at random before the model of good/bad regions takes over
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, total // 4))
    study = optuna.create_study(direction=sweep.goal, sampler=sampler)
    for r in records:
        params = {k: v for k, v in r["params"].items() if k in sweep.space}
        if r["status"] == "finished":
            study.add_trial(create_trial(params=params, distributions=sweep.space, value=r["metric"]))
        else:
            study.add_trial(create_trial(params=params, distributions=sweep.space, state=TrialState.FAIL))
    return study.ask(sweep.space).params


def grid_points(sweep: Sweep) -> list[tuple]:
    return list(itertools.product(*(d.choices for d in sweep.space.values())))


def render(sweep: Sweep, args: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The trial's argv, as `wandb agent` builds it: ${args_no_hyphens} -> key=value items (str of each value)."""
    macros = {
        "env": ["/usr/bin/env"],
        "interpreter": ["python"],
        "program": [sweep.program or ""],
        "args_no_hyphens": [f"{k}={v}" for k, v in args.items()],
    }
    argv: list[str] = []
    for item in sweep.command:
        if item.startswith("${") and item.endswith("}") and item[2:-1] in macros:
            argv += macros[item[2:-1]]
        else:
            argv.append(ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), item))
    return argv
