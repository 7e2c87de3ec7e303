"""A local sweep's directory: its identity (the sweep file and the command-line overrides it started with) and
the trials it has recorded (trials.jsonl), so that running the same command again resumes it and running another
one never adds to its results."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.config import ConfigError
from finetune.sweeps.space import Sweep

IDENTITY = "overrides.json"  # the command-line overrides, beside sweep.yaml (the file's copy)


def differences(then: dict[str, str], now: dict[str, str]) -> list[str]:
    return [
        f"{k}={then.get(k, '(unset)')} then, {now.get(k, '(unset)')} now"
        for k in sorted(set(then) | set(now))
        if then.get(k) != now.get(k)
    ]


def open_dir(sweep: Sweep, path: Path, out: Path) -> dict[int, dict]:
    """Create the sweep directory (a copy of the sweep file, the overrides), or resume it when both match: its
    recorded trials by number. A different file or other overrides are refused, naming what differs."""
    out.mkdir(parents=True, exist_ok=True)
    copy, identity, text = out / "sweep.yaml", out / IDENTITY, path.read_text()
    if copy.is_file() and copy.read_text() != text:
        raise ConfigError(
            [
                f"{path} differs from the one this sweep started with ({copy}); "
                "choose a new sweep_dir= or restore the file"
            ]
        )
    log = out / "trials.jsonl"
    if identity.is_file() and (diff := differences(json.loads(identity.read_text()), sweep.overrides)):
        raise ConfigError(
            [
                f"sweep_dir={out} holds a sweep run with other overrides ({'; '.join(diff)}): its "
                "results would mix with these; rerun with the same overrides, or choose a new sweep_dir="
            ]
        )
    if not identity.is_file() and log.is_file() and log.read_text().strip():
        raise ConfigError(
            [
                f"sweep_dir={out} holds trials with no record of their overrides; choose a new "
                "sweep_dir= so that these results do not mix with them"
            ]
        )
    copy.write_text(text)
    identity.write_text(json.dumps(sweep.overrides, indent=1, sort_keys=True) + "\n")
    records: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                records[r["trial"]] = r  # the last line of a trial wins (started, then finished/failed)
    return dict(sorted(records.items()))
