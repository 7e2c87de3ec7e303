"""Every check that needs no weights, from every stage, collected into one error before anything is written.

Each stage owns its checks (the knowledge they need lives there); this is the one place that runs them all.
`before_weights` is what train.py and preview.py call first; it raises one ConfigError listing every problem.
"""
from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig

from finetune import config
from finetune.benchmarks import callback as benchmarks
from finetune.config import ConfigError, TrainConfig
from finetune.data import examples, prompts
from finetune.model import base, checkpointing, lora
from finetune.runs import rundir
from finetune.training import extras
from finetune.training.kinds import TRAINERS


def problems(dict_cfg: DictConfig) -> list[str]:
    """Every problem in a composed training config, each naming the key and the fix."""
    found = config.check(dict_cfg)
    if any("required, no value given" in p for p in found):
        return found  # the stage checks below read those values
    cfg = dict_cfg
    found += base.check(cfg) + lora.check(cfg) + examples.check(cfg.data) + prompts.check(cfg.eval)
    found += rundir.check(cfg) + checkpointing.check(cfg) + extras.check(cfg) + benchmarks.check(cfg.eval)
    if cfg.trainer.kind in TRAINERS:
        found += TRAINERS[cfg.trainer.kind].check(cfg)
    found += trainer_problems(cfg)
    return found


def before_weights(dict_cfg: DictConfig) -> TrainConfig:
    """The schema object after every check; one ConfigError otherwise."""
    if found := problems(dict_cfg):
        raise ConfigError(found)
    return config.load(dict_cfg)


def trainer_problems(cfg) -> list[str]:
    """What transformers' TrainingArguments would refuse only after the weights load, and what needs a GPU."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    t, found = cfg.trainer, []
    for key, names in (("lr_scheduler", SchedulerType), ("optim", OptimizerNames)):
        valid = [n.value for n in names]
        if getattr(t, key) not in valid:
            found.append(f"trainer.{key}={getattr(t, key)}: transformers has no such {key.replace('_', ' ')}; "
                         f"use one of {', '.join(valid)}")
    if t.activation_offloading and not torch.cuda.is_available():
        found.append("trainer.activation_offloading=true moves activations from the GPU to CPU memory; "
                     "without a GPU set trainer.activation_offloading=false")
    if t.liger and (err := liger_problem()):
        found.append(f"trainer.liger=true needs liger-kernel: {err}; install it with `pip install liger-kernel` "
                     "or set trainer.liger=false")
    return found


def liger_problem() -> Optional[str]:
    """Why Liger's kernels cannot run here, or None; on a CPU they are not used, so nothing is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        import liger_kernel  # noqa: F401
    except Exception as exc:
        return f"import failed ({type(exc).__name__}: {exc})"
    return None
