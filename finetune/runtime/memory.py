"""How much memory this machine has, and the one error for a memory budget larger than the memory it is spent on."""
from __future__ import annotations

import os
from typing import Optional

GiB = 2**30


def ram() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def beyond(size: float, what: str, memory: float, where: str, gpu: bool) -> Optional[str]:
    """The error when a budget of `size` bytes (`what`, the setting as given) exceeds the `memory` bytes it is
    spent on (`where`: a GPU when `gpu`, else the machine's RAM), or None: a plan for memory that is not there
    would be taken at its word and fail at the first step, or never checkpoint at all."""
    if size <= memory:
        return None
    return (f"{what} ({size / GiB:,.1f} GiB) is more than {where} has ({memory / GiB:,.1f} GiB); give at most "
            f"{int(memory // GiB)}GB" + (", or auto for the GPU's free memory" if gpu else ""))
