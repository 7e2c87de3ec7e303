"""A local sweep's directory: its identity (the sweep file and the command-line overrides it started with) and
its Optuna study's trials as records, so that running the same command again resumes it and running another one
never adds to its results."""
from __future__ import annotations

import json
from pathlib import Path

from finetune.config import ConfigError
from finetune.sweeps.space import Sweep

IDENTITY = "overrides.json"  # the command-line overrides, beside sweep.yaml (the file's copy)


def differences(then: dict[str, str], now: dict[str, str]) -> list[str]:
    return [f"{k}={then.get(k, '(unset)')} then, {now.get(k, '(unset)')} now"
            for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]


def open_dir(sweep: Sweep, path: Path, out: Path) -> None:
    """Create the sweep directory (a copy of the sweep file, the overrides), or accept it for a resume when both
    match. A different file or other overrides are refused, naming what differs."""
    out.mkdir(parents=True, exist_ok=True)
    copy, identity, text = out / "sweep.yaml", out / IDENTITY, path.read_text()
    if copy.is_file() and copy.read_text() != text:
        raise ConfigError([f"{path} differs from the one this sweep started with ({copy}); "
                           "choose a new sweep_dir= or restore the file"])
    if identity.is_file() and (diff := differences(json.loads(identity.read_text()), sweep.overrides)):
        raise ConfigError([f"sweep_dir={out} holds a sweep run with other overrides ({'; '.join(diff)}): its "
                           "results would mix with these; rerun with the same overrides, or choose a new sweep_dir="])
    if not identity.is_file() and (out / "study.journal").is_file():
        raise ConfigError([f"sweep_dir={out} holds trials with no record of their overrides; choose a new "
                           "sweep_dir= so that these results do not mix with them"])
    copy.write_text(text)
    identity.write_text(json.dumps(sweep.overrides, indent=1, sort_keys=True) + "\n")


STATUS = {"COMPLETE": "finished", "FAIL": "failed", "RUNNING": "started"}


def records(study, out: Path) -> list[dict]:
    """Every trial the study has started, by number: status, values, metric, run directory and what run_trial
    noted (seconds, returncode, error)."""
    return [{"trial": t.number + 1, "status": STATUS[t.state.name], "params": t.params, "metric": t.value,
             "output_dir": str(out / f"trial-{t.number + 1:03d}"), **t.user_attrs}
            for t in study.trials if t.state.name in STATUS]
