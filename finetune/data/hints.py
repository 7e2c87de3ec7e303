"""A data config written back as the command-line overrides that give it, for hints that name the user's own
data (`data=jsonl data.path=qa.jsonl data.fields.prompt=question ...`) rather than a bundled data set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import OmegaConf

from finetune.config import CONFIGS_DIR, DataConfig

SFT_ADAPTERS = ("alpaca", "self_instruct", "messages", "sharegpt", "oasst", "fields", "text")


def group_of(dcfg) -> str:
    """The configs/data/<group>.yaml whose `name` the config carries (jsonl for any other name)."""
    for p in sorted((CONFIGS_DIR / "data").glob("*.yaml")):
        if OmegaConf.load(p).get("name") == dcfg.name:
            return p.stem
    return "jsonl"


def overrides(dcfg) -> str:
    """`data=<group>` and every key of `dcfg` that differs from that group's file (path, adapter, fields...)."""
    group = group_of(dcfg)
    base = OmegaConf.load(CONFIGS_DIR / "data" / f"{group}.yaml")
    parts, defaults = [f"data={group}"], {f.name: f.default for f in dataclasses.fields(dcfg)}
    for key in ("path", "adapter", "eval_path", "split"):
        value = getattr(dcfg, key)
        if value is not None and value != base.get(key, defaults[key]):
            parts.append(f"data.{key}={value}")
    given = OmegaConf.to_container(base.get("fields") or OmegaConf.create({}))
    for key, value in dataclasses.asdict(dcfg.fields).items():
        if value and value != given.get(key):
            parts.append(f"data.fields.{key}={value}")
    return " ".join(parts)


def sft_overrides(dcfg) -> str | None:
    """The overrides for the conversations in `dcfg`: itself for SFT data; a preference config mapped by field
    names scores its chosen answers; None where the data hold no conversation to score."""
    if dcfg.adapter == "fields" and dcfg.fields.chosen:
        fields = dataclasses.replace(dcfg.fields, response=dcfg.fields.chosen, chosen=None, rejected=None)
        return overrides(dataclasses.replace(dcfg, fields=fields))
    return overrides(dcfg) if dcfg.adapter in SFT_ADAPTERS and not dcfg.fields.chosen else None


def sft_data_for(train_cfg) -> str:
    """For a preference run: the SFT data its starting adapter was trained on (`init_adapter` inside a run
    directory), else its own data's chosen answers, else the bundled conversations (data=oasst)."""
    init = Path(train_cfg.init_adapter).expanduser() if train_cfg.init_adapter else None
    if init is not None and (init.parent / "config.yaml").is_file():
        try:
            data = OmegaConf.load(init.parent / "config.yaml").data
            hint = sft_overrides(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data)))
        except Exception:  # a config.yaml this version cannot read: fall back to the run's own data
            hint = None
        if hint:
            return hint
    return sft_overrides(train_cfg.data) or "data=oasst"
