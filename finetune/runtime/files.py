"""Small files a run's readers rely on (model cards, benchmark results, eval scores), written aside and renamed into
place: a kill or a full disk mid-write leaves the earlier file whole, never a cut one that a later command reads."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# How writers say the disk is full in their own words: the OS's, Rust's (safetensors), and numpy's short write
# (`tofile`, which the gguf package writes tensors with)
DISK_FULL = re.compile(r"No space left on device|os error 28|Disk quota exceeded|\d+ requested and \d+ written")


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


def replace(new: Path, final: Path) -> None:
    """The folder `new` becomes `final`: the old folder is renamed aside first (`<final>.old`, cleared by the next
    replace), so a stop at any moment leaves either a whole old or a whole new `final`, never one half deleted."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def disk_full(exc: BaseException) -> BaseException | None:
    """The exception (`exc` or one it came from) that says the disk is full, or None: an OSError with
    ENOSPC/EDQUOT, or the text that safetensors', torch's and numpy's writers put in their own exception types."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        if DISK_FULL.search(str(seen)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
