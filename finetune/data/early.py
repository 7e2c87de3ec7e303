"""The checks an entry point runs first, before torch or transformers load: the config alone, the data paths,
and the data's first record through its adapter and the trainer kind's check (a misspelled field, SFT data
given to DPO), every record of a small source. A mistake is then answered in about a second, not after the
libraries' import and the tokenizer load; the full read of a large source later finds what lies deeper in it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from finetune import config
from finetune.config import ConfigError
from finetune.data import examples, prompts, sources
from finetune.data.stats import DataError, Stats

WHOLE_FILE_BYTES = 4 << 20  # sources up to this size (on disk) are read whole here; larger ones their first record


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
    adapted and checked as the trainer `kind` needs it, and every record of a small source."""
    from finetune.data.build import ENCODERS

    found = []
    for path in (dcfg.path, dcfg.eval_path):
        if not path or sources.is_hub_id(path):
            continue
        try:
            small = sum(f.stat().st_size for f in sources.files(path)) <= WHOLE_FILE_BYTES
            read = examples.adapted(dcfg, Stats(), path)
            first = next(read, None)
            if first is not None:
                ENCODERS[kind].check_examples([first[0]], dcfg)
            if small:  # every record of a small source (a cut gzip, a bad record on line 900), in well under a second
                for _ in read:
                    pass
        except (DataError, sources.SourceError) as exc:
            found.append(str(exc))
    return found
