"""One job per run directory: <run>/.lock names the holder (host, PID, SLURM job, start time) and is refreshed
while it runs, so a second job on the same output_dir stops before it writes anything.

A lock is stale, and taken over with a message, when its holder is gone: the same host and a dead PID, the same
SLURM job (a requeued job continues its own run), or no refresh for `STALE_S` (a dead node on a shared
filesystem). A kill -9 leaves the lock behind; the next start on that host takes it over.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from finetune.config import ConfigError

LOCK = ".lock"
REFRESH_S = 20  # the holder touches the lock this often
STALE_S = 120  # a lock nobody touched for this long belongs to a dead host


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def holder_gone(held: dict, age_s: float) -> Optional[str]:
    """Why the holder of a lock is gone, or None while it may still run."""
    if age_s > STALE_S:
        return f"not refreshed for {age_s:.0f} s"
    if held.get("job") and held.get("job") == os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {held['job']} was requeued"
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except ProcessLookupError:
            return f"process {held.get('pid')} is gone"
        except (PermissionError, ValueError):
            return None
    return None


def acquire(run_dir: Path) -> Optional[str]:
    """Hold <run>/.lock for this process (rank 0); a note when a stale lock was taken over. ConfigError when
    another job holds it."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    note = None
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            held, age = json.loads(path.read_text() or "{}"), time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            held, age = {}, STALE_S + 1  # half-written by a killed process
        why = holder_gone(held, age)
        if why is None and held.get("pid") != os.getpid():
            raise ConfigError([f"output_dir={run_dir} is in use by another job (host {held.get('host')}, PID "
                               f"{held.get('pid')}, started {held.get('started')}): wait for it to end, or "
                               "choose another output_dir="])
        note = (f"run lock: took over {path} from host {held.get('host')} PID {held.get('pid')} ({why})"
                if why else None)
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(me()))
    atexit.register(release, run_dir)
    threading.Thread(target=refresh, args=(path, os.getpid()), daemon=True).start()
    return note


def refresh(path: Path, pid: int) -> None:
    """Touch the lock every REFRESH_S while this process holds it."""
    while True:
        time.sleep(REFRESH_S)
        try:
            if json.loads(path.read_text()).get("pid") != pid:
                return
            os.utime(path)
        except (OSError, ValueError):
            return


def release(run_dir: Path) -> None:
    path = Path(run_dir) / LOCK
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
