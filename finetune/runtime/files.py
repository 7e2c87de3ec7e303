"""Small files a run's readers rely on (model cards, benchmark results, eval scores), written aside and renamed into
place: a kill or a full disk mid-write leaves the earlier file whole, never a cut one that a later command reads."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: Path, text: str) -> Path:
    """`path.write_text(text)`, all or nothing (rename within one folder is atomic on POSIX filesystems)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
