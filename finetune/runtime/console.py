"""What a run prints: one clear error instead of a traceback for bad input, and rank-0-only messages."""
from __future__ import annotations

import functools
import sys

from finetune.config.errors import UserError
from finetune.runtime import dist


def info(msg: str) -> None:
    if dist.is_main():
        print(msg, flush=True)


def exit_cleanly(fn):
    """Bad input (any `UserError`: config, data, plan, merge, publish) ends the process with its message and
    exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if dist.is_main():
                print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
