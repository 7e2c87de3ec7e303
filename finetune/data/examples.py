"""Adapted, checked examples from a data source, shuffled by `data.seed`, and their train/eval split.

`examples()` reads a source (`sources`), adapts every record (`adapters`), checks it (`chat_format`) and
shuffles; SFT examples are {"messages"} or {"text"}, preference examples {"prompt", "chosen", "rejected"}.
`adapted()` streams the same examples in file order and `order()` gives their shuffled, capped order from their
count alone: how `build` handles data of any size.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from finetune.config import choice_problem
from finetune.data import sources
from finetune.data.adapters import ADAPTERS, Invalid, MissingField
from finetune.data.chat_format import DialogError, check_dialog
from finetune.data.fields import other_shape
from finetune.data.fields import report as fields_report
from finetune.data.stats import DataError, Stats

Example = dict


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
    for key in ("too_long", "train_on", "invalid"):
        problems += choice_problem(f"data.{key}", getattr(dcfg, key))
    if dcfg.max_samples is not None and dcfg.max_samples < 1:
        problems.append(f"data.max_samples={dcfg.max_samples}: must be >= 1, or null for every example")
    if dcfg.num_proc is not None and dcfg.num_proc < 1:
        problems.append(f"data.num_proc={dcfg.num_proc}: must be >= 1, or null for every core this process may use")
    if dcfg.max_length < 16:
        problems.append(f"data.max_length={dcfg.max_length}: too short for a Llama 2 chat turn; use >= 16")
    return problems


# --------------------------------------------------------------------------------------------- examples
def examples(dcfg, stats: Stats | None = None, path: str | None = None) -> list[Example]:
    """Adapted, checked examples of `data.path` (or `path`), shuffled by `data.seed`, capped at `data.max_samples`.

    SFT examples are {"messages"} or {"text"}; preference examples {"prompt", "chosen", "rejected"}. Holds every
    example in memory; the tokenizer (`data.build`) streams them instead, in the same order (`order`).
    """
    stats = stats if stats is not None else Stats()
    path = path or dcfg.path
    skipped = sum(stats.skipped.values())
    out = [ex for ex, _ in adapted(dcfg, stats, path)]
    random.Random(dcfg.seed).shuffle(out)
    out = out[: dcfg.max_samples] if dcfg.max_samples else out
    if not out:
        raise DataError(none_read(dcfg, stats, path, sum(stats.skipped.values()) - skipped))
    return out


def adapted(
    dcfg, stats: Stats, path: str | None = None, start: sources.Position | None = None
) -> Iterator[tuple[Example, sources.Position]]:
    """(example, position of its record) for every adapted, checked example of `data.path` (or `path`) in file
    order, from the record at `start` on. A bad record raises DataError naming its file:line, or with
    `data.invalid=skip` is counted in `stats.skipped` (when the reading ends); `stats.records` counts records."""
    adapter, skipped = ADAPTERS[dcfg.adapter], Counter()
    fields = {k: v for k, v in vars(dcfg.fields).items() if v}  # data.fields that are set: our name -> yours
    try:
        for record, where, position in sources.records(path or dcfg.path, dcfg.split, dcfg.revision, start):
            stats.records += 1
            try:
                exs = [_checked(ex, dcfg) for ex in adapter(record, fields)]
            except MissingField as exc:  # every field the record lacks, each with the column likeliest to hold it
                raise DataError(f"{where}: {fields_report(record, dcfg.adapter, fields) or exc}") from None
            except (Invalid, DialogError) as exc:
                if dcfg.invalid != "skip" and (other := other_shape(record, dcfg.adapter)):
                    raise DataError(f"{where}: {exc}; {other}") from None  # the file's shape, not this record, is wrong
                if dcfg.invalid != "skip":
                    raise DataError(
                        f"{where}: {exc}; fix the record, or set data.invalid=skip to skip such "
                        "records (they are counted)"
                    ) from None
                skipped[re.sub(r"\d+", "N", str(exc))] += 1
                continue
            for ex in exs:
                yield ex, position
    except sources.SourceError as exc:
        raise DataError(str(exc)) from None
    for reason, n in skipped.items():
        stats.skip(reason, n)


def none_read(dcfg, stats: Stats, path: str, skipped: int) -> str:
    """The error for a source that gave no example."""
    return (
        f"data.path={path}: no examples from {stats.records} records with data.adapter={dcfg.adapter}"
        + (f" ({skipped} skipped as invalid)" if skipped else "")
        + "; check data.adapter and data.fields, or the file"
    )


def order(n: int, dcfg) -> np.ndarray:
    """The indices (in file order) of the examples used, in training order, for a source of `n` examples: what
    `examples` does to the examples themselves. `random.Random(seed).shuffle` permutes by position only (it
    swaps items at random indices of a sequence of length n), so shuffling the indices 0..n-1 gives the same
    order as shuffling the examples, without holding them; then `data.max_samples` caps it."""
    index = list(range(n))
    random.Random(dcfg.seed).shuffle(index)
    return np.asarray(index[: dcfg.max_samples] if dcfg.max_samples else index, dtype=np.int64)


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
    empty = [
        f"message {i} ({m['role']})" for i, m in enumerate(msgs) if m["role"] != "system" and not m["content"].strip()
    ]
    empty += [f"the {side} answer" for side in ("chosen", "rejected") if side in ex and not ex[side].strip()]
    if empty:
        raise Invalid(f"{empty[0]} is empty (an empty answer teaches the model to stop at once)")
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
