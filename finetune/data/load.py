"""The one data path for every trainer: read, split, tokenize by kind (`build`: streaming, on every core), cache,
and keep a head of the examples for the preflight and the fixed sample prompts (so nothing reads the data a
second time).

Tokenized data is cached under $FINETUNE_CACHE/data/<name>-<key> by a key over the tokenizer model, the
format code, the trainer kind, every data setting that changes the tokens and the data files' bytes, so
changing any of them re-tokenizes. One process builds it (a file lock: other ranks, nodes on a shared
filesystem, or a `prepare.py` run wait and then read); a build that is interrupted leaves only a temporary
folder, which the next build removes. DPO's reference log-prob table (TRL) is written beside the cached pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune.config import cache_root
from finetune.data import adapters, build, chat_format, examples, sources
from finetune.data.build import ENCODERS, HEAD, PREFLIGHT_SAMPLE  # noqa: F401  (preview, tests)
from finetune.data.stats import Stats
from finetune.runtime import console
from finetune.runtime.cache import build_once

NOT_IN_KEY = ("name", "cache", "num_proc")  # settings that never change the tokens


@dataclass
class Prepared:
    train: object  # datasets.Dataset
    eval: object | None
    stats: Stats
    sample: list[dict] = field(default_factory=list)  # the examples the preflight re-encodes
    head: list[dict] = field(default_factory=list)  # held-out then training examples, for sample prompts


def cache_key(dcfg, sp, kind: str) -> str:
    """sha256 over the tokenizer model, the format code, the kind, every data setting that changes the tokens
    (masking, max length, truncation, sampling, split) and the data's bytes."""
    h = hashlib.sha256(sp.serialized_model_proto())
    encoders = dict.fromkeys(ENCODERS.values())  # every encoder: KTO's unpaired one encodes pairs through `pairs`
    for module in (chat_format, adapters, sources, examples, build, *encoders):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    settings = {k: v for k, v in asdict(dcfg).items() if k not in NOT_IN_KEY}
    h.update(json.dumps({"kind": kind, **settings}, sort_keys=True, default=str).encode())
    h.update(examples.fingerprint(dcfg).encode())
    return h.hexdigest()


def load(dcfg, tokenizer, kind: str = "sft", progress: bool = False) -> Prepared:
    """Tokenized train (and eval) `datasets.Dataset`s for `kind`, from the cache when the key matches.
    `progress`: print what the tokenizer does and its progress bar (prepare.py)."""
    if not dcfg.cache:  # built aside, then held in memory and the files removed
        tmp = Path(tempfile.mkdtemp(prefix=f"uncached-{socket.gethostname()}-{os.getpid()}-", dir=_uncached_dir()))
        try:
            build.build(dcfg, tokenizer.sp, kind, tmp, progress=progress)
            return Prepared(*build.read(tmp, in_memory=True))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    where = cache_root() / "data" / f"{dcfg.name}-{cache_key(dcfg, tokenizer.sp, kind)[:20]}"
    built = build_once(
        where,
        lambda p: (p / "stats.json").is_file(),
        lambda tmp: build.build(dcfg, tokenizer.sp, kind, tmp, str(where), progress),
        lambda: console.info(f"data: another process is preparing {where.name}; waiting for it"),
    )
    prepared = Prepared(*build.read(where))
    prepared.stats.cache = "miss" if built else "hit"
    return prepared


def _uncached_dir() -> Path:
    """Where `data.cache=false` builds, after removing what runs on this host that were killed left there."""
    root = cache_root() / "data"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"uncached-{socket.gethostname()}-*-*"):
        pid = int(old.name.split("-")[-2])
        if not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
