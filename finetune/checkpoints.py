"""The run directory: one for every rank, checkpoints that are complete or absent, resume, and the adapter.

Layout: <run>/config.yaml, <run>/checkpoints/checkpoint-N/ (only complete ones), <run>/adapter/.
Trainer writes a checkpoint into <run>/checkpoints/.incomplete/checkpoint-N; once every rank has finished
writing its part, rank 0 renames it into place (one atomic rename) and deletes all but the last K. A process
killed mid-save leaves its half-written folder under .incomplete/, which is never read and is cleared at the
next start.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from transformers import TrainerCallback

from finetune import config as config_mod
from finetune import modelcard

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING = ".incomplete"
WANDB_ID_FILE = "wandb_run_id"  # finetune/tracking.py keeps the wandb run id there; a resume reuses it


def distributed_state():
    """accelerate's process state; on a CPU-only machine it must be created with cpu=True, or two ranks launched
    by `accelerate launch --multi_gpu` both believe they are rank 0."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def from_rank0(value):
    """`value` as rank 0 computed it, on every rank (each rank runs Hydra and this code on its own)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # set by every launcher (accelerate, torchrun) for >1 process
        return value
    from accelerate.utils import broadcast_object_list

    distributed_state()  # joins the process group
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def start(output_dir: Optional[str], name: str, resume: bool, overwrite: bool) -> tuple[Path, Optional[str]]:
    """(run directory, checkpoint to resume from or None), decided once by rank 0 and shared with every rank.

    - no `output_dir`: outputs/<name>-<time>, a new run (a per-rank `${now:}` would split a run in two when a
      second boundary falls between ranks, seen in 1 of 12 launches);
    - `output_dir` holding checkpoints: resume from the newest complete one (the default after a crash);
    - `resume=false`: never resume; if `output_dir` already holds a run, start over in <output_dir>-<time>;
    - `overwrite=true`: start over in `output_dir` itself, replacing its checkpoints and metrics.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not output_dir:
        path, ckpt = Path("outputs", f"{name}-{stamp}").resolve(), None
    else:
        path = Path(output_dir).expanduser().resolve()
        if not resume and not overwrite and used(path):
            path = path.with_name(f"{path.name}-{stamp}")
        ckpt = latest(path) if resume and not overwrite else None
    path, ckpt = from_rank0((str(path), ckpt))
    return Path(path), ckpt


def run_dir(output_dir: Optional[str], name: str) -> Path:
    """The run directory alone (for entry points that never resume)."""
    return start(output_dir, name, resume=False, overwrite=True)[0]


def used(path: Path) -> bool:
    """A run has already started in `path` (its config or any checkpoint is there)."""
    return (path / "config.yaml").is_file() or (path / "checkpoints").is_dir()


def step_of(ckpt: Path) -> Optional[int]:
    m = CHECKPOINT_RE.match(Path(ckpt).name)
    return int(m.group(1)) if m else None


def complete(path: Path) -> list[Path]:
    """The checkpoints in <run>/checkpoints, oldest first; they are complete by construction (see `promote`)."""
    found = [(step_of(d), d) for d in (Path(path) / "checkpoints").glob("checkpoint-*") if d.is_dir()]
    return [d for s, d in sorted((s, d) for s, d in found if s is not None)]


def latest(path: Path) -> Optional[str]:
    """The newest complete checkpoint under <run>/checkpoints, or None."""
    found = complete(path)
    return str(found[-1]) if found else None


def prepare(path: Path, dict_cfg: DictConfig, resume: Optional[str]) -> None:
    """Rank 0 creates the run directory, writes the resolved config, clears what a killed save left behind and,
    when resuming, drops metrics logged after the checkpoint (they are logged again); the others wait."""
    state = distributed_state()
    if state.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(config_mod.to_yaml(dict_cfg))
        shutil.rmtree(path / "checkpoints" / STAGING, ignore_errors=True)
        if resume is None:  # a new start in this directory (overwrite=true, or no checkpoint was complete)
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
            (path / "metrics.jsonl").unlink(missing_ok=True)
            (path / WANDB_ID_FILE).unlink(missing_ok=True)  # a new start is a new wandb run
        else:
            trim_metrics(path / "metrics.jsonl", step_of(Path(resume)))
    state.wait_for_everyone()


def trim_metrics(metrics: Path, step: Optional[int]) -> None:
    """Keep the rows up to the resumed step; a line cut off by the kill is dropped too."""
    if step is None or not metrics.is_file():
        return
    keep = [line for line in metrics.read_text().splitlines() if row_step(line) is not None and row_step(line) <= step]
    tmp = metrics.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(metrics)


def row_step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def staging_dir(path: Path) -> Path:
    """Where Trainer writes checkpoints (its `output_dir`); `promote` moves each one out when complete."""
    return path / "checkpoints" / STAGING


def promote(written: Path, path: Path, keep: Optional[int]) -> Path:
    """Move a fully written checkpoint into <run>/checkpoints (flushed to disk first, then one rename), then
    delete all but the newest `keep` (None or <= 0: keep all)."""
    fsync_tree(written)
    final = path / "checkpoints" / written.name
    if final.exists():
        discard(final, path)
    written.rename(final)
    fsync_dir(final.parent)
    if keep and keep > 0:
        for old in complete(path)[:-keep]:
            discard(old, path)
    return final


def discard(ckpt: Path, path: Path) -> None:
    """Rename out of checkpoints/ first, so a kill during the delete never leaves half a checkpoint in view."""
    trash = staging_dir(path) / f"deleting-{ckpt.name}-{secrets.token_hex(3)}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    ckpt.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def attach(trainer, path: Path, keep: Optional[int]) -> None:
    """Make `trainer` resumable exactly: checkpoints complete or absent (AtomicCheckpoints), and adapter weights
    in float32 from the start. Trainer resumes a LoRA run through peft's `load_adapter`, which upcasts bf16
    adapter weights to float32, while TRL casts QLoRA adapters to bf16 when it builds the trainer: a resumed run
    would go on in another precision (its adapter differed by 9e-4 from the uninterrupted run after 2 steps,
    measured). FSDP and DeepSpeed resume through their own loaders and keep TRL's single dtype, which FSDP's
    flat parameters need."""
    if not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
                p.data = p.data.float()
    trainer.add_callback(AtomicCheckpoints(path, keep))


class AtomicCheckpoints(TrainerCallback):
    """Promotes each checkpoint Trainer saved into the staging folder once every rank has written its part
    (Trainer's own checkpoint-N is written file by file, and its rotation would delete an older complete
    checkpoint before the new one is finished)."""

    def __init__(self, path: Path, keep: Optional[int]):
        self.path, self.keep = Path(path), keep

    def on_save(self, args, state, control, **kwargs):
        distributed_state().wait_for_everyone()  # other ranks write rng_state_<rank>.pth (and FSDP shards)
        if state.is_world_process_zero:
            written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            promote(written, self.path, self.keep)


def save(trainer, tokenizer, path: Path) -> Path:
    """adapter/ (adapter weights + config, tokenizer with its licence files) in the run directory."""
    out = path / "adapter"
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the adapter is gathered into ordinary safetensors
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    if trainer.args.should_save:
        tokenizer.save(out)
        # peft saves every adapter of the model, each other one in a subfolder named after it (DPO: TRL's frozen
        # "ref" copy of the starting adapter); adapter/ ships the trained one only, to export and publish.
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        for name in set(peft_model.peft_config) - {peft_model.active_adapter}:
            shutil.rmtree(out / name, ignore_errors=True)
        modelcard.write(out, path, "adapter")  # replaces peft's template card: metadata, hyperparameters, metrics
        shutil.rmtree(staging_dir(path), ignore_errors=True)  # only TRL's checkpoint README is left there
    trainer.accelerator.wait_for_everyone()
    return out
