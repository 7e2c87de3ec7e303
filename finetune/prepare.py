"""Tokenize before the GPU job:
`python finetune/prepare.py recipe=qlora_13b [data=... data.path=...] [data.num_proc=16]`.

Reads, checks and tokenizes the data on every core of a CPU machine into the tokenized cache
($FINETUNE_CACHE/data/<name>-<key>) and prints the `data:` line; `train.py` with the same recipe and data settings
then starts with `tokenized cache: hit`. Give the training job the same $FINETUNE_CACHE (a shared filesystem) and
the same data paths: both are part of the key. Run by several processes or nodes on one shared filesystem, one
tokenizes and the others wait for it and read. Loads no weights. Exits 2 on bad data, naming the file and line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from omegaconf import DictConfig

from finetune import config
from finetune.config import ConfigError
from finetune.runtime import console

config.register()


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="prepare")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.data import load as data
    from finetune.model.tokenizer import load_tokenizer
    from finetune.training import checks, kinds

    cfg = checks.before_weights(dict_cfg)
    if not cfg.data.cache:
        raise ConfigError(
            [
                "data.cache=false: prepare.py fills the tokenized cache for the training run; "
                "drop data.cache=false (the training run must use the cache too)"
            ]
        )
    tokenizer = load_tokenizer(cfg.model)
    start = time.time()
    prepared = data.load(cfg.data, tokenizer, cfg.trainer.kind, progress=True)
    kinds.check_data(cfg, prepared)  # the training run would refuse it too (KTO: answers of one kind only)
    stats = prepared.stats
    console.info(
        f"data: {cfg.data.name}: {stats.summary()}\n"
        f"cache: {stats.cache_dir} ({'tokenized' if stats.cache == 'miss' else 'already there'}, "
        f"{time.time() - start:.0f} s); train.py with the same recipe, data and $FINETUNE_CACHE reads it"
    )


if __name__ == "__main__":
    main()
