"""Datasets in, Meta-exact Llama 2 token ids and label masks out, cached, counted and checked.

`examples()` reads a source (`finetune.sources`), adapts every record (`finetune.adapters`), checks it, and
shuffles by `data.seed`; `load()` splits, tokenizes with `finetune.chat_format` and returns `datasets.Dataset`s
ready for TRL (`input_ids` + `assistant_masks`: TRL trains exactly the masked-in tokens). Tokenized data is
cached under $FINETUNE_CACHE/data (default .cache/data) by a key over the tokenizer, the format code, every
data setting and the data files' bytes, so changing any of them re-tokenizes.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune import adapters, chat_format, sources
from finetune.adapters import ADAPTERS, Invalid, MissingField
from finetune.chat_format import DialogError, check_dialog, encode_dialog, encode_text

Example = dict


class DataError(ValueError):
    """Bad input data: names the file, line and field, and the fix."""


def check(dcfg) -> list[str]:
    """Problems in a data config that need no reading of the data."""
    problems = []
    if dcfg.adapter not in ADAPTERS:
        problems.append(f"data.adapter={dcfg.adapter}: unknown; valid adapters: {', '.join(sorted(ADAPTERS))}")
    for key in ("path", "eval_path"):
        path = getattr(dcfg, key)
        if path and not sources.is_hub_id(path) and not Path(path).expanduser().exists():
            problems.append(f"data.{key}={path}: no such file or folder (or give a hub dataset id like org/name)")
    if not 0.0 <= dcfg.eval_fraction < 1.0:
        problems.append(f"data.eval_fraction={dcfg.eval_fraction}: must be in [0, 1)")
    if dcfg.eval_path and dcfg.eval_fraction:
        problems.append("data.eval_path and data.eval_fraction are both set: choose one (data.eval_fraction=0)")
    for key, valid in (("too_long", ("drop", "truncate")), ("train_on", ("all", "last")),
                       ("invalid", ("error", "skip"))):
        if getattr(dcfg, key) not in valid:
            problems.append(f"data.{key}={getattr(dcfg, key)}: use {' or '.join(valid)}")
    if dcfg.max_length < 16:
        problems.append(f"data.max_length={dcfg.max_length}: too short for a Llama 2 chat turn; use >= 16")
    return problems


@dataclass
class Stats:
    """What happened to the data, for the start-of-run report, preview and the preflight."""

    records: int = 0  # raw records read
    examples: int = 0  # tokenized examples kept (train + eval)
    eval_examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records skipped (data.invalid=skip)
    dropped_too_long: int = 0
    truncated_turns: int = 0  # later turns dropped to fit; every kept answer keeps its EOS
    cut: int = 0  # the first answer itself cut at max_length: that example has no EOS to learn
    chunked: int = 0  # raw-text documents split into max_length pieces
    lengths: list[int] = field(default_factory=list)  # tokens per kept example
    cache: str = "off"  # hit | miss | off
    cache_dir: str = ""

    def summary(self) -> str:
        n = sorted(self.lengths) or [0]
        skipped = "; ".join(f"{v} skipped: {k}" for k, v in self.skipped.items())
        return (f"{self.examples} examples ({self.eval_examples} eval) from {self.records} records"
                + (f" ({skipped})" if skipped else "")
                + f"; too long: {self.dropped_too_long} dropped, {self.truncated_turns} cut at a turn boundary, "
                f"{self.cut} answers cut (EOS lost), {self.chunked} documents chunked; tokens per example: "
                f"min {n[0]}, median {n[len(n) // 2]}, p95 {n[int(0.95 * (len(n) - 1))]}, max {n[-1]}; "
                f"tokenized cache: {self.cache}")


# --------------------------------------------------------------------------------------------- examples
def examples(dcfg, stats: Stats | None = None, path: str | None = None) -> list[Example]:
    """Adapted, checked examples of `data.path` (or `path`), shuffled by `data.seed`, capped at `data.max_samples`.

    SFT examples are {"messages"} or {"text"}; preference examples {"prompt", "chosen", "rejected"}.
    """
    stats = stats if stats is not None else Stats()
    path = path or dcfg.path
    adapter, skipped, out = ADAPTERS[dcfg.adapter], Counter(), []
    fields = {k: v for k, v in vars(dcfg.fields).items() if v}  # data.fields that are set: our name -> yours
    try:
        for record, where in sources.read_records(path, dcfg.split, dcfg.revision):
            stats.records += 1
            try:
                out += [_checked(ex, dcfg) for ex in adapter(record, fields)]
            except MissingField as exc:
                raise DataError(f"{where}: {exc}") from None
            except (Invalid, DialogError) as exc:
                if dcfg.invalid != "skip":
                    raise DataError(f"{where}: {exc}; fix the record, or set data.invalid=skip to skip such "
                                    "records (they are counted)") from None
                skipped[re.sub(r"\d+", "N", str(exc))] += 1
    except sources.SourceError as exc:
        raise DataError(str(exc)) from None
    for reason, n in skipped.items():
        stats.skipped[reason] = stats.skipped.get(reason, 0) + n
    random.Random(dcfg.seed).shuffle(out)
    out = out[: dcfg.max_samples] if dcfg.max_samples else out
    if not out:
        raise DataError(f"data.path={path}: no examples from {stats.records} records with data.adapter="
                        f"{dcfg.adapter}" + (f" ({sum(skipped.values())} skipped as invalid)" if skipped else "")
                        + "; check data.adapter and data.fields, or the file")
    return out


def _checked(ex: Example, dcfg) -> Example:
    """The example with `data.system_prompt` added where it has none; DialogError/Invalid if malformed."""
    if "text" in ex:
        if not ex["text"].strip():
            raise Invalid("empty text")
        return ex
    msgs = ex["messages"] if "messages" in ex else ex["prompt"]
    if dcfg.system_prompt and msgs and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": dcfg.system_prompt})
    check_dialog(msgs, "assistant" if "messages" in ex else "user")
    if "chosen" in ex and ex["chosen"].strip() == ex["rejected"].strip():
        raise Invalid("chosen and rejected are identical (such a pair teaches nothing: its DPO loss stays ln 2)")
    return ex


def split(items: list, eval_fraction: float) -> tuple[list, list]:
    """(train, eval): the first round(n * eval_fraction) items are the eval set (items are already shuffled)."""
    n_eval = int(round(len(items) * eval_fraction))
    return items[n_eval:], items[:n_eval]


def splits(dcfg, stats: Stats | None = None) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples: `data.eval_path` read like `data.path`, else `data.eval_fraction` of `data.path`."""
    exs = examples(dcfg, stats)
    if dcfg.eval_path:
        return exs, examples(dcfg, stats, path=dcfg.eval_path)
    return split(exs, dcfg.eval_fraction)


def fingerprint(dcfg) -> str:
    """sha256 over the bytes of the data (data.path and data.eval_path): the data part of any cache key."""
    parts = [sources.fingerprint(p, dcfg.split, dcfg.revision) for p in (dcfg.path, dcfg.eval_path) if p]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- tokenizing
def encode(ex: Example, sp, dcfg, stats: Stats) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) pieces of one example within `data.max_length`, per `data.too_long`, counted in `stats`."""
    limit = dcfg.max_length
    if "text" in ex:
        ids, mask = encode_text(sp, ex["text"])
        if len(ids) <= limit:
            return [(ids, mask)]
        if dcfg.too_long == "drop":
            stats.dropped_too_long += 1
            return []
        stats.chunked += 1  # every token is kept, in pieces; only the last piece ends with EOS
        return [(ids[i:i + limit], mask[i:i + limit]) for i in range(0, len(ids), limit)]
    msgs = ex["messages"]
    ids, mask = encode_dialog(sp, msgs, dcfg.train_on)
    if len(ids) <= limit:
        return [(ids, mask)]
    if dcfg.too_long == "drop":
        stats.dropped_too_long += 1
        return []
    answers = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for end in reversed(answers[:-1]):  # keep the most whole turns that fit: their answers keep EOS
        short = encode_dialog(sp, msgs[: end + 1], dcfg.train_on)
        if len(short[0]) <= limit:
            stats.truncated_turns += 1
            return [short]
    ids, mask = ids[:limit], mask[:limit]
    if not any(mask):  # the first prompt alone is longer than the limit: nothing left to train
        stats.dropped_too_long += 1
        return []
    stats.cut += 1
    return [(ids, mask)]


def tokenize(exs: list[Example], sp, dcfg, stats: Stats) -> dict[str, list]:
    cols: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    for ex in exs:
        for ids, mask in encode(ex, sp, dcfg, stats):
            cols["input_ids"].append(ids)
            cols["assistant_masks"].append(mask)
            stats.lengths.append(len(ids))
    stats.examples += len(cols["input_ids"])
    return cols


def cache_key(dcfg, sp) -> str:
    """sha256 over the tokenizer model, the format code (chat_format, adapters, this module), every data
    setting that changes the tokens (masking, max length, truncation, sampling, split) and the data's bytes."""
    h = hashlib.sha256(sp.serialized_model_proto())
    for module in (chat_format, adapters, sources):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    settings = {k: v for k, v in asdict(dcfg).items() if k not in ("name", "cache")}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(fingerprint(dcfg).encode())
    return h.hexdigest()


def load(dcfg, tokenizer) -> tuple[object, object | None, Stats]:
    """(train, eval or None, stats): tokenized `datasets.Dataset`s for SFT, from the cache when the key matches."""
    import datasets
    from datasets import Dataset, load_from_disk
    from filelock import FileLock

    if not dcfg.cache:
        return _tokenized(dcfg, tokenizer.sp, Dataset)
    where = Path(os.environ.get("FINETUNE_CACHE", ".cache")) / "data" / f"{dcfg.name}-{cache_key(dcfg, tokenizer.sp)[:20]}"
    where.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(where) + ".lock"):  # one rank tokenizes, the others wait and read
        if (where / "stats.json").is_file():
            stats = Stats(**json.loads((where / "stats.json").read_text()))
            stats.cache, stats.cache_dir = "hit", str(where)
            evals = load_from_disk(str(where / "eval")) if (where / "eval").is_dir() else None
            return load_from_disk(str(where / "train")), evals, stats
        train, evals, stats = _tokenized(dcfg, tokenizer.sp, Dataset)
        tmp = where.with_name(where.name + f".tmp{os.getpid()}")
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a bar per save is noise; datasets' own bars elsewhere stay as they were
        train.save_to_disk(str(tmp / "train"))
        if evals is not None:
            evals.save_to_disk(str(tmp / "eval"))
        if not quiet:
            datasets.enable_progress_bars()
        stats.cache, stats.cache_dir = "miss", str(where)
        (tmp / "stats.json").write_text(json.dumps(asdict(stats)))
        tmp.rename(where)
    return train, evals, stats


def _tokenized(dcfg, sp, Dataset) -> tuple[object, object | None, Stats]:
    stats = Stats()
    train, evals = splits(dcfg, stats)
    if any("prompt" in ex for ex in train + evals):
        raise DataError(f"data={dcfg.name} (adapter {dcfg.adapter}) gives preference pairs (prompt/chosen/"
                        "rejected); SFT needs conversations or text: use an SFT data config, or trainer=dpo")
    train_ds = Dataset.from_dict(tokenize(train, sp, dcfg, stats))
    n_train = stats.examples
    eval_cols = tokenize(evals, sp, dcfg, stats)
    stats.eval_examples = stats.examples - n_train
    eval_ds = Dataset.from_dict(eval_cols) if stats.eval_examples else None
    if len(train_ds) == 0:
        raise DataError(f"data={dcfg.name}: every example is longer than data.max_length={dcfg.max_length}; "
                        "raise data.max_length or set data.too_long=truncate")
    return train_ds, eval_ds, stats
