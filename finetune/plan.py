"""Will a recipe fit these GPUs, how fast, and what to change, before any weight loads.

    python finetune/plan.py recipe=qlora_70b                         # on the GPUs present (else: one H100 80GB)
    python finetune/plan.py recipe=lora_13b gpus=2 gpu_memory=24GB micro_batch=4 max_length=4096

Every train.py override works too (`model=`, `lora.r=`, `trainer.micro_batch_size=` ...). Shorthands:
gpus= plan.gpus, gpu_memory= plan.gpu_memory, gpu= plan.gpu, micro_batch= trainer.micro_batch_size,
max_length= data.max_length. Exit code 0 when it fits, 1 when it does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from omegaconf import DictConfig

from finetune import config
from finetune.runtime import console

config.register()

SHORTHANDS = {
    "gpus": "plan.gpus",
    "gpu_memory": "plan.gpu_memory",
    "gpu": "plan.gpu",
    "micro_batch": "trainer.micro_batch_size",
    "max_length": "data.max_length",
}


def expand(args: list[str]) -> list[str]:
    """`gpus=2` -> `plan.gpus=2` and so on; every other argument passes to Hydra unchanged."""
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        out.append(f"{SHORTHANDS[key]}={value}" if eq and key in SHORTHANDS else arg)
    return out


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="plan")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    import torch

    from finetune.planning import report as plan_report
    from finetune.runtime.dist import launched_sharding

    cfg = plan_report.load(dict_cfg)  # what the arithmetic needs; no model, data or bitsandbytes required
    plan, cuda = cfg.plan, torch.cuda.is_available()
    gpus = plan.gpus or (torch.cuda.device_count() if cuda else 1)
    sharding = plan.sharding or launched_sharding() or "ddp"
    layers = plan_report.budget_plan(cfg)  # trainer.memory_budget: the per-layer checkpointing plan within it
    setup = layers.setup if layers else plan_report.setup(cfg, gpus, sharding)
    fits, text = plan_report.report(cfg, setup, plan_report.card(plan, cuda), plan.utilization)
    print(text + (f"\n{layers.line()}" if layers else ""))
    sys.exit(0 if fits else 1)


def cli() -> None:
    """`python finetune/plan.py ...` and the `finetune-plan` command."""
    sys.argv[1:] = expand(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
