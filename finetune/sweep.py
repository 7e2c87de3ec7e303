# Trials are kept in trials.jsonl, not in an Optuna study with a JournalStorage file: measured, that switch left
# sweep.py + sweeps/ at 646 lines, as before (Optuna already proposes the values, from the replayed records; the
# identity checks, the trial runner and the report stay), lost the readable trials.jsonl, needed Optuna's private
# storage API to note a resumed trial's seconds and error, and could not use GridSampler (it shuffles the grid; a
# sweep walks the file's `values` in order), so the grid was queued by hand anyway.
"""Run a wandb sweep file with no server: `python finetune/sweep.py launch/sweeps/qlora_lr.yaml [trials=12]`.

The same file runs online with `wandb sweep FILE && wandb agent <entity/project/id>`. Here each trial is a
subprocess of the file's `command` (`${env} accelerate launch finetune/train.py ${args_no_hyphens}`), rendered
the way `wandb agent` renders it, with the trial's values as key=value overrides and its own output_dir under
the sweep directory: one `accelerate launch` per trial, never Hydra multirun inside it (every rank would run the
whole sweep). The metric is read from the trial's metrics.jsonl. A failed trial is recorded and the sweep goes
on. Running the same command again resumes: recorded trials are skipped and an interrupted one runs again
(train.py continues it from its last checkpoint).

Options: trials=N (default: the grid's size, or the file's run_cap), sweep_dir=PATH (default
outputs/sweeps/<file name>), sampler_seed=N. Every other key=value goes to every trial and fixes that key, e.g.
model.path=/models/Llama-2-13b-hf or tracking=none.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from omegaconf import OmegaConf

from finetune import config
from finetune.benchmarks import objective
from finetune.config import ConfigError
from finetune.runs.rundir import finished
from finetune.runtime import console
from finetune.sweeps import logged
from finetune.sweeps import records as sweep_records
from finetune.sweeps import report as sweep_report
from finetune.sweeps import space as sweep_space
from finetune.sweeps.space import Sweep

USAGE = "usage: python finetune/sweep.py SWEEP_FILE [trials=N] [sweep_dir=PATH] [sampler_seed=N] [key=value ...]"


@dataclass
class Options:
    trials: int | None = None  # default: every grid point, or the file's run_cap
    sweep_dir: str | None = None  # default: outputs/sweeps/<file name without .yaml>
    sampler_seed: int = 0  # random and bayes proposals are reproducible for a given seed and history


@console.exit_cleanly
def main(argv: list[str] | None = None) -> int:  # None: the command line (the `finetune-sweep` command)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    path, opts, overrides = parse_args(argv)
    sweep = sweep_space.load(path, overrides)
    if note := objective.prepare(sweep):  # metric benchmark/<task>/<metric>: trials score the task at their end
        console.info(note)
    total = trial_count(sweep, opts.trials)
    out = Path(opts.sweep_dir or Path("outputs", "sweeps", path.stem)).resolve()
    if trains(sweep):
        precheck(sweep, out)
    records = sweep_records.open_dir(sweep, path, out)
    console.info(
        f"sweep {path} ({sweep.method}, {sweep.goal} {sweep.metric}): {total} trials in {out}"
        + (f", {len(records)} recorded" if records else "")
    )
    for r in [r for r in records.values() if r["status"] == "started"]:  # interrupted: run again, same values
        records[r["trial"]] = run_trial(sweep, r["trial"], total, r["params"], out)
        sweep_report.write(sweep, list(records.values()), out)
    while len(records) < total:
        n = len(records) + 1
        params = sweep_space.propose(sweep, list(records.values()), total, opts.sampler_seed)
        records[n] = run_trial(sweep, n, total, params, out)
        sweep_report.write(sweep, list(records.values()), out)
    sweep_report.write(sweep, list(records.values()), out)
    best = sweep_report.ranked(sweep, list(records.values()))[0]
    if best["status"] != "finished":
        console.info(f"every trial failed; see trial.log in each trial folder under {out}")
        return 1
    console.info(
        f"best: trial {best['trial']} {sweep.metric}={best['metric']:.6g} {fmt_params(best['params'])}\n"
        f"leaderboard: {out / 'leaderboard.md'} (and .csv), plot: {out / 'sweep.png'}"
    )
    return 0


def parse_args(argv: list[str]) -> tuple[Path, Options, dict[str, str]]:
    """The sweep file, this script's options, and the key=value overrides for every trial."""
    if not argv or "=" in argv[0]:
        raise ConfigError([USAGE])
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError([f"{path}: no such sweep file (the ones shipped are in launch/sweeps/)"])
    names = {f.name for f in fields(Options)}
    mine, overrides = [], {}
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if not eq:
            raise ConfigError([f"{arg}: expected key=value", USAGE])
        if key == "output_dir":
            raise ConfigError(["output_dir=: every trial gets its own (<sweep_dir>/trial-NNN); set sweep_dir= instead"])
        if key in names:
            mine.append(arg)
        else:
            overrides[key] = value
    try:
        opts = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Options), OmegaConf.from_dotlist(mine)))
    except Exception as exc:  # omegaconf's ValidationError names the key and the expected type
        raise ConfigError([f"{exc}".splitlines()[0], USAGE]) from None
    return path, opts, overrides  # type: ignore[return-value]


def trial_count(sweep: Sweep, trials: int | None) -> int:
    grid = sweep_space.size(sweep)
    n = trials or sweep.run_cap or grid
    if not n or n < 1:
        raise ConfigError([f"{sweep.path}: a {sweep.method} sweep has no end; pass trials=N or set run_cap: N"])
    return min(n, grid) if grid else n


def trains(sweep: Sweep) -> bool:
    """The trials run finetune/train.py: named in the command, or as the file's `program:` via ${program}."""
    words = list(sweep.command) + ([sweep.program] if sweep.program and "${program}" in sweep.command else [])
    return any(str(w).endswith("finetune/train.py") for w in words)


def precheck(sweep: Sweep, out: Path) -> None:
    """Compose the training config with a trial's overrides before any trial runs: a misspelled key in the
    sweep file or on the command line would otherwise fail every trial, one at a time; and the sweep's metric
    must be one the trials log."""
    from hydra import compose, initialize_config_dir

    from finetune.config.hydra_errors import explain
    from finetune.training import checks

    sample = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in sweep.space.items()}
    args = [f"{k}={v}" for k, v in trial_args(sweep, sample, out / "trial-000").items()]
    config.register()
    cfg = None
    try:
        with initialize_config_dir(config_dir=str(config.CONFIGS_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=args)
        problems = checks.problems(cfg)
    except Exception as exc:  # Hydra's and omegaconf's errors, in our words
        problems = [explain(exc)]
    if problems:
        why = "\n".join(problems)
        raise ConfigError(
            [
                f"{sweep.path}: finetune/train.py rejects the trial overrides {' '.join(args)}:\n    "
                + why.replace("\n", "\n    ")
            ]
        )
    evals = bool(cfg.data.eval_fraction or cfg.data.eval_path)
    if bad := logged.problem(sweep.metric, sweep.metrics_key, cfg.trainer.kind, evals):
        raise ConfigError([f"{sweep.path}: {bad}"])


def trial_args(sweep: Sweep, params: dict[str, Any], trial_dir: Path) -> dict[str, Any]:
    """What ${args_no_hyphens} holds for a trial: fixed values, swept values, and the trial's output_dir."""
    fixed = {k: v for k, v in sweep.fixed.items() if k not in params}
    return {**fixed, **params, "output_dir": str(trial_dir)}


def run_trial(sweep: Sweep, n: int, total: int, params: dict[str, Any], out: Path) -> dict:
    """Run one trial to the end and return its record (also appended to trials.jsonl)."""
    trial_dir = out / f"trial-{n:03d}"
    record = {"trial": n, "status": "started", "params": params, "output_dir": str(trial_dir)}
    if not done(trial_dir, sweep.metrics_key):  # finished before the sweep was interrupted: only record it
        append(out, record)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        argv = sweep_space.render(sweep, trial_args(sweep, params, trial_dir), env)
        console.info(f"trial {n}/{total}: {fmt_params(params)}")
        trial_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with (trial_dir / "trial.log").open("a") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            try:
                rc = watch(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), trial_dir, n, total)
            except OSError as exc:  # the command's program is not there (e.g. accelerate not installed)
                log.write(f"error: cannot run {argv[0]}: {exc}\n")
                rc = 127
        record["seconds"] = round(time.perf_counter() - t0, 1)
        record["returncode"] = rc
    metric = read_metric(trial_dir / "metrics.jsonl", sweep.metrics_key)
    if record.get("returncode", 0) == 0 and metric is not None:
        record.update(status="finished", metric=metric)
        console.info(f"trial {n}/{total}: {sweep.metric}={metric:.6g}")
    else:
        why = (
            f"exit {record['returncode']}: {last_error(trial_dir / 'trial.log')}"
            if record.get("returncode")
            else f"no {sweep.metrics_key} in {trial_dir / 'metrics.jsonl'} (does the run have an eval split?)"
        )
        record.update(status="failed", metric=None, error=why)
        console.info(f"trial {n}/{total} failed ({why}); log: {trial_dir / 'trial.log'}")
    append(out, record)
    return record


def watch(proc: subprocess.Popen, trial_dir: Path, n: int, total: int, every_s: float = 5.0) -> int:
    """Wait for a trial, printing its newest logged step and loss as they appear (its full output is in
    trial.log), so a sweep is never silent for a whole trial."""
    from finetune.runs import metrics  # imports transformers: after --help and the sweep's checks

    shown = None
    while proc.poll() is None:
        time.sleep(every_s)
        path = trial_dir / "metrics.jsonl"
        rows = [r for r in metrics.read(path) if "loss" in r] if path.is_file() else []
        if rows and rows[-1]["step"] != shown:
            shown = rows[-1]["step"]
            console.info(f"trial {n}/{total}: step {shown}, loss {rows[-1]['loss']:.4g}")
    return proc.returncode


def done(trial_dir: Path, key: str) -> bool:
    return finished(trial_dir) and read_metric(trial_dir / "metrics.jsonl", key) is not None


def read_metric(path: Path, key: str) -> float | None:
    """The last logged value of `key` (what wandb's run summary, and so its sweep controller, would use)."""
    if not path.is_file():
        return None
    from finetune.runs import metrics

    values = [row[key] for row in metrics.read(path) if isinstance(row.get(key), (int, float))]
    return float(values[-1]) if values and math.isfinite(values[-1]) else None


def last_error(log: Path) -> str:
    """The run's `error: ...` message if it printed one (bad config or data), else its last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    if not starts:
        return (lines[-1] if lines else "(no output)")[:400]
    message = list(itertools.takewhile(lambda ln: not ln.startswith("Traceback"), lines[starts[-1] :]))
    return " ".join(message)[:400]  # accelerate launch adds its own traceback after the run's message


def append(out: Path, record: dict) -> None:
    with (out / "trials.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":
    sys.exit(main())
