"""The checks an entry point runs first, before torch or transformers load: the config alone, the data paths,
and the data's first record through its adapter and the trainer kind's check (a misspelled field, SFT data
given to DPO). A mistake is then answered in about a second, not after the libraries' import and the
tokenizer load; the full read of the data later finds what lies deeper in the file.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from finetune import config
from finetune.config import ConfigError
from finetune.data import examples, prompts, sources
from finetune.data.stats import DataError, Stats


def check(dict_cfg: DictConfig) -> None:
    """One ConfigError for what the config and the data paths show, else one DataError (naming file and line)
    for what the data's first records show; nothing otherwise."""
    found = config.check(dict_cfg)
    if not found:
        cfg = OmegaConf.to_object(dict_cfg)
        found = examples.check(cfg.data) + prompts.check(cfg.eval)
        if not found and (bad := first_records(cfg.data, cfg.trainer.kind)):
            raise DataError("\n".join(bad))
    if found:
        raise ConfigError(found)


def first_records(dcfg, kind: str) -> list[str]:
    """The first example of `data.path` and `data.eval_path` (local files; a hub dataset is read later, online),
    adapted and checked as the trainer `kind` needs it."""
    from finetune.data.build import ENCODERS

    found = []
    for path in (dcfg.path, dcfg.eval_path):
        if not path or sources.is_hub_id(path):
            continue
        try:
            first = next(examples.adapted(dcfg, Stats(), path), None)
            if first is not None:
                ENCODERS[kind].check_examples([first[0]], dcfg)
        except (DataError, sources.SourceError) as exc:
            found.append(str(exc))
    return found
