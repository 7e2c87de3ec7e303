"""Every check that needs no weights, from every stage, collected into one error before anything is written.

Each stage owns its checks (the knowledge they need lives there); this is the one place that runs them all.
`before_weights` is what train.py and preview.py call first; it raises one ConfigError listing every problem.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from finetune import config
from finetune.benchmarks import callback as benchmarks
from finetune.config import ConfigError, TrainConfig, UserError, methods
from finetune.data import examples, prompts
from finetune.model import base, checkpointing, lora
from finetune.runs import rundir
from finetune.runs.damage import unusable
from finetune.runtime import memory
from finetune.training import extras
from finetune.training.kinds import TRAINERS


def problems(dict_cfg: DictConfig) -> list[str]:
    """Every problem in a composed training config, each naming the key and the fix."""
    found = config.check(dict_cfg)
    if any("required, no value given" in p for p in found):
        return found  # the stage checks below read those values
    cfg = dict_cfg
    found += base.check(cfg) + lora.check(cfg) + examples.check(cfg.data) + prompts.check(cfg.eval)
    found += rundir.check(cfg) + checkpointing.check(cfg) + extras.check(cfg) + methods.check(cfg)
    found += benchmarks.check(cfg.eval)
    if cfg.trainer.kind in TRAINERS:
        found += TRAINERS[cfg.trainer.kind].check(cfg)
    found += trainer_problems(cfg) + weights_problems(cfg)
    return found


def before_weights(dict_cfg: DictConfig, recipe: str | None = None, training: bool = False) -> TrainConfig:
    """The schema object after every check; one ConfigError otherwise. `training`: first, what this machine cannot
    train at all (a GPU-sized `recipe` or FSDP without a GPU), alone on one line: nothing else matters here."""
    if training and (found := machine_problems(dict_cfg, recipe)):
        raise ConfigError(found) if len(found) > 1 else UserError(found[0])
    if found := problems(dict_cfg):
        raise ConfigError(found)
    return config.load(dict_cfg)


def machine_problems(cfg, recipe: str | None) -> list[str]:
    """A recipe sized for a GPU on a machine without one, or a launch that shards over GPUs that are not there."""
    fsdp = [p for p in base.launch_problems(cfg.model, cfg.quant) if p.startswith("FSDP ")]
    return memory.gpu_sized(cfg, recipe) + fsdp


def trainer_problems(cfg) -> list[str]:
    """What transformers' TrainingArguments would refuse only after the weights load, and what needs a GPU."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    tcfg, found = cfg.trainer, []
    for key, names in (("lr_scheduler", SchedulerType), ("optim", OptimizerNames)):
        valid = [n.value for n in names]
        if getattr(tcfg, key) not in valid:
            found.append(
                f"trainer.{key}={getattr(tcfg, key)}: transformers has no such {key.replace('_', ' ')}; "
                f"use one of {', '.join(valid)}"
            )
    if tcfg.activation_offloading and not torch.cuda.is_available():
        found.append(
            "trainer.activation_offloading=true moves activations from the GPU to CPU memory; "
            "without a GPU set trainer.activation_offloading=false"
        )
    if tcfg.memory_budget is not None and not torch.cuda.is_available() and (err := ram_problem(tcfg.memory_budget)):
        found.append(err)
    if tcfg.liger and (err := liger_problem()):
        found.append(
            f"trainer.liger=true needs liger-kernel: {err}; install it with `pip install liger-kernel` "
            "or set trainer.liger=false"
        )
    return found


def ram_problem(budget: str) -> str | None:
    """A CPU run trains in RAM: a memory budget beyond it (which the GPU plan would accept) is refused. On a GPU the
    budget plan compares it with the card (planning.report.budget_plan)."""
    if str(budget).lower() == "auto":
        return None  # refused without a GPU by the budget's own check
    try:
        size = config.parse_size(budget, "trainer.memory_budget", "G")
    except ConfigError:
        return None  # named by the budget's own check
    return memory.beyond(size, f"trainer.memory_budget={budget}", memory.ram(), "this machine's RAM (no GPU)", False)


def liger_problem() -> str | None:
    """Why Liger's kernels cannot run here, or None; on a CPU they are not used, so nothing is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        import liger_kernel  # noqa: F401
    except Exception as exc:
        return f"import failed ({type(exc).__name__}: {exc})"
    return None


def weights_problems(cfg) -> list[str]:
    """Damaged weights the run would start from, read in full before any base weight loads: `init_adapter`'s
    (whose header and shapes `lora.check` reads) and, on a resume, every file of the latest checkpoint. Either
    would end in a traceback inside peft or Trainer, or train on from NaNs."""
    found = []
    if cfg.init_adapter and (weights := lora.adapter_path(cfg.init_adapter) / "adapter_model.safetensors").is_file():
        if (why := unusable(weights)) and "cannot be read" not in why:  # unreadable headers: lora.check says so
            found.append(
                f"init_adapter={cfg.init_adapter}: adapter_model.safetensors {why}; point it at a finished "
                "run's adapter/ folder, or retrain the adapter"
            )
    if cfg.output_dir and cfg.resume and not cfg.overwrite and (ckpt := rundir.latest(Path(cfg.output_dir))):
        ckpt = Path(ckpt)
        # what every checkpoint holds whatever the strategy: the step and schedule; the adapter where peft saved one
        needed = ["trainer_state.json"] + (
            ["adapter_model.safetensors"] if (ckpt / "adapter_config.json").is_file() else []
        )
        damaged = [(ckpt / n, "is missing") for n in needed if not (ckpt / n).is_file()] + [
            (f, why) for f in sorted(p for p in ckpt.rglob("*") if p.is_file()) if (why := unusable(f))
        ]
        if damaged:
            (f, why), earlier = damaged[0], [c for c in sorted(ckpt.parent.glob("checkpoint-*"), key=rundir.step_of)]
            to = f"resume from {earlier[-2].name}" if len(earlier) > 1 else "start over"
            found.append(
                f"output_dir={cfg.output_dir}: {f.relative_to(ckpt.parent)} {why}, so the run cannot "
                f"resume from {ckpt.name}; delete {ckpt} to {to}, or start over with overwrite=true"
            )
    return found
