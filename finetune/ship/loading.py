"""A trained run back in memory: its tokenizer, its base (quantized as trained) and its adapter, or its merged
weights. Used by chat.py, evaluate.py and the export verification."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from finetune.config import QuantConfig, TrainConfig
from finetune.model import base as model
from finetune.model import tokenizer as tok


def quant_config(quant: QuantConfig | None, train_cfg: TrainConfig, merged: bool) -> QuantConfig:
    """`quant=` if given; else the run's own quantization for base + adapter (the model that was trained), and
    none for merged weights (already what export chose)."""
    return quant or (QuantConfig() if merged else train_cfg.quant)


def load_tokenizer(run: Path, train_cfg: TrainConfig):
    """The tokenizer the run saved beside its adapter (tokenizer.model + HF files)."""
    return tok.load_tokenizer(dataclasses.replace(train_cfg.model, tokenizer=str(run / "adapter")))


def load_base(run: Path | None, train_cfg: TrainConfig, tokenizer, quant: QuantConfig | None, merged: bool = False):
    """The run's base model (or its merged/ weights) on whatever device is present, in eval mode."""
    if merged:
        mcfg = dataclasses.replace(train_cfg.model, path=str(run / "merged"), random_init=False)
    else:  # the base as training resolved it (<run>/inputs.json); random-init tiny bases rebuilt if missing
        mcfg = recorded_base(run, train_cfg)
        mcfg = dataclasses.replace(mcfg, path=model.resolved_path(mcfg, tokenizer))
    qcfg = quant_config(quant, train_cfg, merged)
    base = model.load_base(mcfg, qcfg)  # keeps the bitsandbytes CPU repack off
    if qcfg.mode == "none" and torch.cuda.is_available():
        base.to("cuda")
    return base.eval()


def recorded_base(run: Path | None, train_cfg: TrainConfig):
    """A copy of the run's model config naming the base training resolved (path and revision from
    <run>/inputs.json); random-init bases (rebuilt from their seed where this machine caches them) and runs
    without that file: model.path and model.revision as config.yaml has them."""
    from finetune.runs import inputs

    record = inputs.read(run) if run is not None else None
    if record is None or train_cfg.model.random_init:
        return dataclasses.replace(train_cfg.model)
    return dataclasses.replace(train_cfg.model, path=record.base_path, revision=record.base_revision)


def add_adapter(base, run: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(run / "adapter")).eval()
