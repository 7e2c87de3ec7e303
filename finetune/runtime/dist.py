"""Ranks through accelerate's `PartialState`, and the sharding `accelerate launch` set up (read from its env)."""

from __future__ import annotations

import os


def state():
    """accelerate's process state; on a CPU-only machine it must be created with cpu=True, or two ranks launched
    by `accelerate launch --multi_gpu` both believe they are rank 0."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def distributed() -> bool:
    """More than one process (every launcher, accelerate or torchrun, sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Rank 0, from the launcher's RANK (a single process is rank 0): known without joining the process group, so
    an error is printed once even where the group cannot form (FSDP on a machine without GPUs)."""
    return int(os.environ.get("RANK", "0")) == 0 if distributed() else True


def is_local_main() -> bool:
    """The first process on this machine (LOCAL_RANK 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def from_rank0(value):
    """`value` as rank 0 computed it, on every rank (each rank runs Hydra and our code on its own)."""
    if not distributed():
        return value
    from accelerate.utils import broadcast_object_list

    state()  # joins the process group
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def wait_for_everyone() -> None:
    if distributed():
        state().wait_for_everyone()


def launched_sharding(env=None) -> str | None:
    """What `accelerate launch` set up: "fsdp", "zero2", "zero3", or None for plain data parallel / one process.
    Reads the environment as it is now (`env` for a launcher's prepared one)."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "zero3" if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "zero2"
    return None
