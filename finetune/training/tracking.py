"""Experiment tracking: `tracking=none|wandb|tensorboard`, logged by rank 0 through the Trainer's own callbacks.

wandb: `start` opens the run before the Trainer's WandbCallback, which then logs into it. The run is named
after the run directory, holds the resolved config as flat dotted keys (`lora.r`, `trainer.learning_rate`: the
names a sweep file uses), and keeps its id in <run>/wandb_run_id, so a resumed run continues the same wandb run.
WANDB_MODE (and `wandb offline`) is honoured; with no API key and no offline mode the run goes on offline
instead of failing. Under `wandb agent` the agent's WANDB_RUN_ID wins, so the run joins its sweep.
TensorBoard: event files in <run>/tensorboard/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune import config
from finetune.config import TrackingConfig
from finetune.runs.rundir import WANDB_ID_FILE as ID_FILE
from finetune.runtime import dist


def report_to(cfg: TrackingConfig) -> str | list[str]:
    """TrainingArguments.report_to for the chosen tracker."""
    return "none" if cfg.backend == "none" else [cfg.backend]


def start(cfg: TrackingConfig, run_dir: Path, dict_cfg: DictConfig, resumed: bool) -> None:
    """Open the tracker for this run (wandb: rank 0 only; the other ranks never log). Call before building the
    Trainer: its TensorBoardCallback reads the log folder when it is created. A resumed run keeps its wandb id;
    a new start in the same folder (overwrite=true) is a new wandb run."""
    if cfg.backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if cfg.backend != "wandb" or not dist.is_main():
        return
    import wandb

    mode = wandb_mode(run_dir)
    id_file = run_dir / ID_FILE
    stored = id_file.read_text().strip() if resumed and id_file.is_file() else None
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags) or None,
        name=run_dir.name,
        id=None if os.environ.get("WANDB_RUN_ID") else stored,  # a sweep agent's id comes through the env
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        config=flat_config(dict_cfg),
    )
    if mode != "disabled":
        id_file.write_text(run.id + "\n")


def finish(cfg: TrackingConfig) -> None:
    """Close the wandb run (rank 0), so its files are complete before the process exits."""
    if cfg.backend == "wandb" and dist.is_main():
        import wandb

        if wandb.run is not None:
            wandb.finish()


def wandb_mode(run_dir: Path) -> str:
    """online, offline or disabled: WANDB_MODE or `wandb offline|disabled` if set; online needs an API key, and
    without one the run goes offline with a one-line notice (a training job must not die for its logger)."""
    import wandb

    mode = wandb.setup().settings.mode
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "disabled":
        return "disabled"
    if wandb.login(prompt=False, verify=False):
        return "online"
    print(
        f"wandb: no API key (`wandb login` or WANDB_API_KEY) and WANDB_MODE is not offline: logging offline to "
        f"{run_dir / 'wandb'}; upload later with `wandb sync {run_dir / 'wandb'}/offline-run-*`",
        flush=True,
    )
    return "offline"


def flat_config(dict_cfg: DictConfig) -> dict[str, Any]:
    """The resolved config with secrets redacted, as {"lora.r": 16, "trainer.learning_rate": 0.0002, ...}."""
    container = config.redact(OmegaConf.to_container(dict_cfg, resolve=True))
    return dict(config.flatten(container))
