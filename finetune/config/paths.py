"""Where things are: the repository's config roots, the cache root, and local path vs hub id."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RECIPES_DIR = ROOT / "recipes"
CONFIGS_DIR = ROOT / "configs"


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
