"""One way to fill a cache folder: under a file lock, written aside and renamed into place, so concurrent
ranks (or jobs) never see half of it and a process killed mid-write leaves only a temporary folder."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def build_once(path: Path, ready: Callable[[Path], bool], write: Callable[[Path], None]) -> bool:
    """Make `path` by `write(tmp)` unless `ready(path)`; True when this call built it. A stale folder that is
    not ready (an older format) is replaced. Other processes asking for the same path wait on the lock."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if ready(path):
            return False
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return True
