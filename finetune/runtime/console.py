"""What a run prints: one clear error instead of a traceback for bad input, and rank-0-only messages."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings

from finetune.config.errors import UserError
from finetune.runtime import dist


def quiet_library_notices() -> None:
    """Two library notices every command printed, each silenced by its exact source, never wholesale (called by
    `exit_cleanly` as an entry point starts):
    - peft and TRL read `model.is_gradient_checkpointing`, which transformers 5 renamed (their call, not ours);
    - bitsandbytes on an AVX512-BF16 CPU looks for a Hub kernel for the repacked 4-bit path, which we switch off
      (model.base.disable_cpu_weight_repacking), so the kernel would never run."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def info(msg: str) -> None:
    if dist.is_main():
        print(msg, flush=True)


def reader_gone() -> None:
    """Standard output's reader went away (`train.py --help | head -1`): the rest of the output goes nowhere and the
    command ends with exit code 1 instead of a BrokenPipeError traceback (Python's documented way, `signal` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # interpreter shutdown flushes stdout again: it must not raise a second time
    sys.exit(1)


def exit_cleanly(fn):
    """Bad input (any `UserError`: config, data, plan, merge, publish) ends the process with its message and
    exit code 2, no traceback; Ctrl-C with one line and the shell's code for it, 130 (train.py says more itself:
    the step and the command that resumes)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_library_notices()
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if dist.is_main():
                print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            if dist.is_main():
                print(f"\ninterrupted (Ctrl-C): {os.path.basename(sys.argv[0])} stopped", file=sys.stderr, flush=True)
            sys.exit(130)
        except BrokenPipeError:
            reader_gone()

    return wrapper


def hydra_errors(main):
    """Around `@hydra.main`: Hydra's own errors (a misspelled key or recipe, a wrong type) end with our one line
    and exit code 2 instead of Hydra's text (exit 1, and advice to add the key with `+`). Hydra re-raises
    instead of printing when HYDRA_FULL_ERROR is set, its documented switch, set for this call only."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from finetune.config.hydra_errors import explain

        was = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return main(*args, **kwargs)
        except (HydraException, OmegaConfBaseException) as exc:
            if was == "1":  # the user asked for the full stack trace
                raise
            if dist.is_main():
                print(f"error: {explain(exc)}", file=sys.stderr, flush=True)
            sys.exit(2)
        except BrokenPipeError:  # Hydra's --help and --cfg print before our function runs
            reader_gone()
        finally:
            if was is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = was

    return wrapper


@contextlib.contextmanager
def datasets_bars(show: bool):
    """`datasets`' progress bars on only where the caller reports progress (prepare.py), never inside a training
    run (TRL's preparation of data we already tokenized drew six); the previous setting comes back after."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    if not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()
