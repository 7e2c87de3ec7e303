"""Hydra registration: the schema, and every `recipes/*.yaml` as an option of the group `recipe`."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from finetune.config.paths import RECIPES_DIR
from finetune.config.schema import TrainConfig


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def register() -> None:
    """Add the schema and every recipes/*.yaml (as group `recipe`, package _global_) to Hydra's store."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name in recipe_names():
        node = OmegaConf.load(RECIPES_DIR / f"{name}.yaml")
        cs.store(group="recipe", name=name, node=node, package="_global_")
