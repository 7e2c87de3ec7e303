"""How a training run ends early without a traceback, and what it says: Ctrl-C (the step it stopped at, the latest
complete checkpoint, the command that resumes; exit 130) and a full disk (the path, the space free and needed).

Checkpoints are complete or absent (runs.checkpoints), so stopping at any moment loses nothing complete: a
checkpoint being written stays in the staging folder, which the next start clears.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from finetune.config import UserError
from finetune.runs import checkpoints, rundir
from finetune.runtime import dist, files

MiB = 2**20


class DiskFullError(UserError, OSError):
    """The run's disk has no room for what the run writes: names the path, the space free and the space needed."""


def command(overrides: list[str], run_dir: Path | None) -> str:
    """The command that picks the run up again: the user's own launcher and overrides with output_dir= pointing at
    this run (a run resumes from its latest checkpoint by default) and without resume=/overwrite= (overwrite=true
    would start it over)."""
    keep = [
        o
        for o in overrides
        if o.lstrip("+~").split("=")[0] not in (("output_dir", "resume", "overwrite") if run_dir else ())
    ]
    script = os.path.relpath(sys.argv[0])
    script = sys.argv[0] if script.startswith("..") else script
    words = keep + ([f"output_dir={run_dir}"] if run_dir else [])
    return " ".join([*launcher(), script, *(shlex.quote(w) for w in words)])


def launcher() -> list[str]:
    """The words before the script: `python`, or the launcher's own (accelerate launch --config_file ...,
    torchrun ...), read from the parent process that started this rank."""
    if not any(k in os.environ for k in ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID", "LOCAL_RANK")):
        return ["python"]
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        argv = []
    script = os.path.basename(sys.argv[0])
    cut = next((i for i, a in enumerate(argv) if os.path.basename(a) == script), None)
    if not cut:
        return ["accelerate", "launch"]
    words = argv[:cut]
    if len(words) > 1 and os.path.basename(words[0]).startswith("python") and words[1] != "-m":
        words = [os.path.basename(words[1]), *words[2:]]  # python .venv/bin/accelerate launch -> accelerate launch
    return [shlex.quote(w) for w in words]


def restart(run_dir: Path | None, overrides: list[str]) -> str:
    """Where the run stands and the command that goes on from there."""
    latest = rundir.latest(run_dir) if run_dir else None
    if latest:
        state, verb = f"latest complete checkpoint: {latest}", "resume"
    else:
        state, verb = ("no complete checkpoint yet", "start over") if run_dir else ("nothing written", "rerun")
    return f"{state}; {verb}: {command(overrides, run_dir)}"


def interrupted(trainer, run_dir: Path | None, overrides: list[str]) -> str:
    """The one line a Ctrl-C prints."""
    if trainer is not None:
        from finetune.training import progress

        progress.close(trainer)
        state = trainer.state
        at = f"stopped at step {state.global_step}" + (f" of {state.max_steps}" if state.max_steps else "")
    else:
        at = "stopped before training began"
    return f"{at} (Ctrl-C); {restart(run_dir, overrides)}"


full = files.disk_full  # train.py's name for it


def disk_full(
    exc: BaseException, run_dir: Path, cfg, need: tuple[float, float], overrides: list[str], trainer=None
) -> DiskFullError:
    """The error for a write that failed on a full disk; the half-written checkpoint is removed first (it is never
    read, and its space is what the user needs back)."""
    if trainer is not None:
        from finetune.training import progress

        progress.close(trainer)
    if dist.is_main():
        shutil.rmtree(checkpoints.staging_dir(run_dir), ignore_errors=True)
    free = shutil.disk_usage(run_dir).free if run_dir.exists() else 0
    path = getattr(exc, "filename", None) or run_dir
    return DiskFullError(
        f"{path}: no space left on the disk ({free / MiB:,.1f} MiB free); "
        f"{needs(need, cfg.trainer)}; free space, lower trainer.save_total_limit, or give output_dir= "
        f"on a bigger disk; {restart(run_dir, overrides)}"
    )


def needs(need: tuple[float, float], t) -> str:
    ckpt, adapter, n = *need, kept(t)
    return (
        f"this run needs ~{(n * ckpt + adapter) / MiB:,.1f} MiB: {n} checkpoints on disk at once of "
        f"~{ckpt / MiB:,.1f} MiB each (trainer.save_total_limit={t.save_total_limit} kept, plus the one being "
        f"written) and the adapter (~{adapter / MiB:,.1f} MiB)"
    )


def kept(t) -> int:
    """Checkpoints on disk at once: trainer.save_total_limit complete ones plus the one being written, or every
    save when nothing is deleted (no more than the run makes, when its length is in steps)."""
    saves = t.max_steps // t.save_steps if t.max_steps > 0 else None
    at_once = t.save_total_limit + 1 if t.save_total_limit and t.save_total_limit > 0 else saves
    return min(n for n in (at_once, saves, 1 << 30) if n is not None)


def room(cfg, need: tuple[float, float]) -> None:
    """Before anything is written: the disk under output_dir (or outputs/) has room for the checkpoints kept at
    once and the final adapter; those already there (a resume) count as written. DiskFullError otherwise."""
    output_dir, limit = cfg.output_dir, kept(cfg.trainer)
    path = Path(output_dir or "outputs").expanduser().resolve()
    resume = cfg.resume and not cfg.overwrite
    existing = len(checkpoints.complete(path)) if resume and path.is_dir() else 0
    probe = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(probe).free
    wanted = max(limit - existing, 0) * need[0] + need[1]
    if free < wanted:
        raise DiskFullError(
            f"output_dir={output_dir or path}: {free / MiB:,.1f} MiB free on its disk, and "
            f"{needs(need, cfg.trainer)}"
            + (f", {existing} of them written" if existing else "")
            + "; free space, lower trainer.save_total_limit, or give output_dir= on a bigger disk"
        )


def say(line: str) -> None:
    """Rank 0 prints the line on stderr, where errors go."""
    if dist.is_main():
        print(line, file=sys.stderr, flush=True)
