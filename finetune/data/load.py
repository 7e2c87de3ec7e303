"""The one data path for every trainer: read once, split, tokenize by kind, cache, and keep a head of the
examples for the preflight and the fixed sample prompts (so nothing reads the data file a second time).

Tokenized data is cached under $FINETUNE_CACHE/data/<name>-<key> by a key over the tokenizer model, the
format code, the trainer kind, every data setting that changes the tokens and the data files' bytes, so
changing any of them re-tokenizes. DPO's reference log-prob table (TRL) is written beside the cached pairs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune.config import cache_root
from finetune.data import adapters, chat_format, examples, pairs, sft, sources
from finetune.data.stats import DataError, Stats
from finetune.runtime.cache import build_once

ENCODERS = {"sft": sft, "dpo": pairs}  # trainer.kind -> how its examples become token columns
PREFLIGHT_SAMPLE = 64  # conversations whose inference prompts the preflight re-encodes
HEAD = 256  # examples (held-out first) kept for sample prompts


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
    for module in (chat_format, adapters, sources, examples, ENCODERS[kind]):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    settings = {k: v for k, v in asdict(dcfg).items() if k not in ("name", "cache")}
    h.update(json.dumps({"kind": kind, **settings}, sort_keys=True, default=str).encode())
    h.update(examples.fingerprint(dcfg).encode())
    return h.hexdigest()


def load(dcfg, tokenizer, kind: str = "sft") -> Prepared:
    """Tokenized train (and eval) `datasets.Dataset`s for `kind`, from the cache when the key matches."""
    if not dcfg.cache:
        return tokenized(dcfg, tokenizer.sp, kind)
    where = cache_root() / "data" / f"{dcfg.name}-{cache_key(dcfg, tokenizer.sp, kind)[:20]}"
    built = build_once(where, lambda p: (p / "stats.json").is_file(),
                       lambda tmp: save(tokenized(dcfg, tokenizer.sp, kind), tmp, str(where)))
    prepared = read(where)
    prepared.stats.cache = "miss" if built else "hit"
    return prepared


def tokenized(dcfg, sp, kind: str) -> Prepared:
    stats, encoder = Stats(), ENCODERS[kind]
    exs = examples.examples(dcfg, stats)
    train, held_out = ((exs, examples.examples(dcfg, stats, path=dcfg.eval_path)) if dcfg.eval_path
                       else examples.split(exs, dcfg.eval_fraction))
    encoder.check_examples(train + held_out, dcfg)
    train_cols = encoder.tokenize(train, sp, dcfg, stats)
    n_train = stats.examples
    eval_cols = encoder.tokenize(held_out, sp, dcfg, stats)
    stats.eval_examples = stats.examples - n_train
    if n_train == 0:
        raise DataError(encoder.nothing_left(dcfg))
    from datasets import Dataset

    return Prepared(Dataset.from_dict(train_cols), Dataset.from_dict(eval_cols) if stats.eval_examples else None,
                    stats, exs[:PREFLIGHT_SAMPLE], (held_out + train)[:HEAD])


def save(p: Prepared, folder: Path, final: str) -> None:
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a bar per save is noise; datasets' own bars elsewhere stay as they were
    p.train.save_to_disk(str(folder / "train"))
    if p.eval is not None:
        p.eval.save_to_disk(str(folder / "eval"))
    if not quiet:
        datasets.enable_progress_bars()
    p.stats.cache_dir = final
    (folder / "head.json").write_text(json.dumps({"sample": p.sample, "head": p.head}, ensure_ascii=False))
    (folder / "stats.json").write_text(json.dumps(asdict(p.stats)))


def read(where: Path) -> Prepared:
    from datasets import load_from_disk

    stats = Stats(**json.loads((where / "stats.json").read_text()))
    heads = json.loads((where / "head.json").read_text())
    evals = load_from_disk(str(where / "eval")) if (where / "eval").is_dir() else None
    return Prepared(load_from_disk(str(where / "train")), evals, stats, heads["sample"], heads["head"])
