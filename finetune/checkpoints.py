"""The run directory: one for every rank, resumable checkpoints, and the final adapter."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from finetune import config as config_mod


def run_dir(output_dir: Optional[str], name: str) -> Path:
    """`output_dir`, or outputs/<name>-<time> with the time chosen by rank 0 and broadcast to every rank.

    Each rank runs Hydra on its own, so a per-rank `${now:}` splits a run in two when a second boundary falls
    between ranks (seen in 1 of 12 launches); the broadcast makes the name identical everywhere.
    """
    if output_dir:
        return Path(output_dir).expanduser().resolve()
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    state = distributed_state()
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(stamp, from_process=0)
    return Path("outputs", f"{name}-{stamp[0]}").resolve()


def distributed_state():
    """accelerate's process state; on a CPU-only machine it must be created with cpu=True, or two ranks launched
    by `accelerate launch --multi_gpu` both believe they are rank 0."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def prepare(path: Path, dict_cfg: DictConfig) -> None:
    """Create the run directory and write the resolved config (rank 0; the others wait)."""
    state = distributed_state()
    if state.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(config_mod.to_yaml(dict_cfg))
    state.wait_for_everyone()


CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def complete(ckpt: Path) -> bool:
    """Trainer writes trainer_state.json last: without it, a checkpoint was interrupted mid-save."""
    return (ckpt / "trainer_state.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()


def latest(path: Path) -> Optional[str]:
    """The newest complete checkpoint under <run>/checkpoints, or None."""
    found = []
    for d in (Path(path) / "checkpoints").glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(d.name)
        if m and d.is_dir() and complete(d):
            found.append((int(m.group(1)), d))
    return str(max(found)[1]) if found else None


def save(trainer, tokenizer, path: Path) -> Path:
    """adapter/ (adapter weights + config, tokenizer with its licence files) in the run directory."""
    out = path / "adapter"
    trainer.save_model(str(out))
    if trainer.args.should_save:
        tokenizer.save(out)
    trainer.accelerator.wait_for_everyone()
    return out
