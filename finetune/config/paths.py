"""Where things are: the toolkit's configs, recipes and bundled data, the cache root, and local path vs hub id."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE = Path(__file__).resolve().parent.parent  # finetune/
# An installed wheel carries configs/, recipes/ and data/ as package data in finetune/bundled/ (pyproject.toml); a
# checkout (editable install, or `python finetune/train.py`) has them beside finetune/.
ROOT = PACKAGE / "bundled" if (PACKAGE / "bundled" / "configs").is_dir() else PACKAGE.parent
RECIPES_DIR = ROOT / "recipes"
CONFIGS_DIR = ROOT / "configs"
DATA_DIR = ROOT / "data"


def bundled(relative: str) -> str:
    """The `${bundled:data/...}` resolver of the configs: a file the toolkit ships (the Llama 2 tokenizer, the sample
    data), as an absolute path that holds from any working directory, in a checkout or an installed wheel."""
    return str(ROOT / relative)


# registered with the paths, so that every reader of a config (Hydra's apps, OmegaConf.load) resolves it
OmegaConf.register_new_resolver("bundled", bundled, replace=True)


def cache_root() -> Path:
    """$FINETUNE_CACHE (default .cache): tokenized data, DPO pairs, random-init models."""
    return Path(os.environ.get("FINETUNE_CACHE", ".cache"))


def looks_local(path: str) -> bool:
    """A hub id is `org/name`; anything else (absolute, ./, ~, more slashes, or existing) is a local path."""
    return path.startswith(("/", ".", "~")) or path.count("/") != 1 or Path(path).exists()


SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, key: str, default_unit: str = "", example: str = "a size like 24GB, 80GiB or 500MB") -> int:
    """'24GB', '80GiB', '500MB', '2G' -> bytes; a bare number is in `default_unit` ("" bytes, "G" GiB).
    One meaning for every size we read: KB/MB/GB/TB are binary, like KiB/MiB/GiB/TiB, as GPU makers size
    cards ("24GB" holds 24 GiB) and nvidia-smi reports them."""
    import re

    from finetune.config.errors import ConfigError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m:
        raise ConfigError([f"{key}={text}: write {example}"])
    unit = m.group(2) if (m.group(2) or m.group(3)) else default_unit
    return int(float(m.group(1)) * SIZE_UNITS[unit])
