"""Checkpoints that are complete or absent, exact resume, and the final adapter.

Trainer writes a checkpoint into <run>/checkpoints/.incomplete/checkpoint-N; once every rank has finished
writing its part, rank 0 renames it into place (one atomic rename) and deletes all but the last K. A process
killed mid-save leaves its half-written folder under .incomplete/, which is never read and is cleared at the
next start.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from finetune.runs import card
from finetune.runs.rundir import LORA_INIT, STAGING, step_of
from finetune.runtime import console, dist


def complete(path: Path) -> list[Path]:
    """The checkpoints in <run>/checkpoints, oldest first; they are complete by construction (see `promote`)."""
    found = [(step_of(d), d) for d in (Path(path) / "checkpoints").glob("checkpoint-*") if d.is_dir()]
    return [d for s, d in sorted((s, d) for s, d in found if s is not None)]


def staging_dir(path: Path) -> Path:
    """Where Trainer writes checkpoints (its `output_dir`); `promote` moves each one out when complete."""
    return path / "checkpoints" / STAGING


def promote(written: Path, path: Path, keep: int | None) -> Path:
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


def attach(trainer, path: Path, keep: int | None) -> None:
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

    def __init__(self, path: Path, keep: int | None):
        self.path, self.keep = Path(path), keep

    def on_save(self, args, state, control, **kwargs):
        dist.wait_for_everyone()  # other ranks write rng_state_<rank>.pth (and FSDP shards)
        if state.is_world_process_zero:
            written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            promote(written, self.path, self.keep)


def train(trainer, resume: str | None) -> None:
    """`trainer.train` from `resume`. A checkpoint at the last step (the run was killed while it saved its final
    adapter) has nothing left to train: its adapter is the run's final one, restored as it is (Trainer would
    train one step too many). FSDP checkpoints are sharded and go through Trainer's own loader."""
    if resume and last_step(resume, trainer.args.max_steps) and not trainer.is_fsdp_enabled:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = trainer.accelerator.unwrap_model(trainer.model)
        weights = load_file(str(Path(resume) / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights, adapter_name=model.active_adapter)
        console.info(f"{Path(resume).name} is the last step: training was complete, its adapter is the final one")
        return
    trainer.train(resume_from_checkpoint=resume)


def last_step(ckpt: str, max_steps: int) -> bool:
    """The checkpoint is at the run's last step: `max_steps` as configured now (a resume may extend it), or the
    checkpoint's own for a run measured in epochs."""
    state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
    limit = max_steps if max_steps > 0 else state.get("max_steps", 0)
    return 0 < limit <= state.get("global_step", 0)


def convert(peft_model, out: Path, initial: Path) -> bool:
    """PiSSA/OLoRA trained an adapter on the residual base W - s·B0·A0 (model.variants): rewrite out/'s adapter as
    peft converts it, a plain LoRA of rank 2r holding s·(B·A - B0·A0), which applies to the original base. False
    when the run has no initial adapter to convert against (every other initialisation)."""
    if not (initial / "adapter_config.json").is_file():
        return False
    peft_model.save_pretrained(
        str(out), selected_adapters=[peft_model.active_adapter], path_initial_model_for_weight_conversion=str(initial)
    )
    shutil.rmtree(initial, ignore_errors=True)
    return True


def save(trainer, tokenizer, path: Path) -> Path:
    """adapter/ (adapter weights + config, tokenizer with its licence files, card) in the run directory, written
    aside and renamed into place once complete: a run killed while saving has no adapter/ (which would read as
    finished) and its rerun saves the same adapter from the last checkpoint."""
    out, final = path / ".adapter.partial", path / "adapter"
    if trainer.args.should_save:
        shutil.rmtree(out, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the adapter is gathered into ordinary safetensors
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    if trainer.args.should_save:
        # Trainer also pickles its TrainingArguments there (training_args.bin): not needed to load, and a pickle
        # runs code when unpickled; adapter/ ships safetensors only (config.yaml holds the same settings).
        (out / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save(out)
        # peft saves every adapter of the model, each other one in a subfolder named after it (DPO: TRL's frozen
        # "ref" copy of the starting adapter); adapter/ ships the trained one only, to export and publish.
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        for name in set(peft_model.peft_config) - {peft_model.active_adapter}:
            shutil.rmtree(out / name, ignore_errors=True)
        convert(peft_model, out, path / LORA_INIT)
        card.write(out, path, "adapter")  # replaces peft's template card: metadata, hyperparameters, metrics
        fsync_tree(out)
        shutil.rmtree(final, ignore_errors=True)  # overwrite=true, or an adapter from before this run
        out.rename(final)
        shutil.rmtree(staging_dir(path), ignore_errors=True)  # only TRL's checkpoint README is left there
    trainer.accelerator.wait_for_everyone()
    return final
