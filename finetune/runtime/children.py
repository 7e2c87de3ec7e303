"""Child processes that end with the process that started them: the tokenizing pool's workers and datasets' queue
manager are forked and would outlive a parent killed with -9 (they wait on pipes the parent never closes).

Inside `bound()`, every process forked by this one asks the kernel for SIGKILL when its parent dies
(prctl PR_SET_PDEATHSIG on Linux; elsewhere a thread that watches the parent's PID).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1
_bound = {"parent": None}  # the PID whose forked children die with it, while `bound()` is active
_hooked = False


def die_with(parent: int) -> None:
    """End this process when `parent` ends (or now, if it already has)."""
    try:
        ok = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):  # no prctl: not Linux
        ok = False
    if not ok:
        threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died between the fork and the request
        os._exit(1)


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def _after_fork() -> None:
    parent, _bound["parent"] = _bound["parent"], None  # the child's own children are its business
    if parent is not None:
        die_with(parent)


@contextlib.contextmanager
def bound():
    """Processes forked inside this block die with this process."""
    global _hooked
    if not _hooked:
        os.register_at_fork(after_in_child=_after_fork)
        _hooked = True
    _bound["parent"] = os.getpid()
    try:
        yield
    finally:
        _bound["parent"] = None
