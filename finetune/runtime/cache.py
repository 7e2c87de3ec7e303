"""One way to fill a cache folder: under a file lock, written aside and renamed into place, so concurrent
ranks (or jobs, or nodes sharing the filesystem) never see half of it and a process killed mid-write leaves
only a temporary folder, which the next builder removes."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from finetune.runtime import files


def build_once(
    path: Path, ready: Callable[[Path], bool], write: Callable[[Path], None], waiting: Callable[[], None] | None = None
) -> bool:
    """Make `path` by `write(tmp)` unless `ready(path)`; True when this call built it. A stale folder that is
    not ready (an older format) is replaced. Other processes asking for the same path wait on the lock (after
    calling `waiting`, when the lock is held)."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting:
            waiting()
        lock.acquire()
    try:
        if ready(path):
            return False
        for stale in path.parent.glob(f"{path.name}.tmp*"):  # a builder killed mid-write: the lock was its own
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        try:
            write(tmp)
        except BaseException:  # an error or Ctrl-C: nothing half-written stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files.replace(tmp, path)
        return True
    finally:
        lock.release()
