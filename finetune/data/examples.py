"""Adapted, checked examples from a data source, shuffled by `data.seed`, and their train/eval split.

`examples()` reads a source (`sources`), adapts every record (`adapters`), checks it (`chat_format`) and
shuffles; SFT examples are {"messages"} or {"text"}, preference examples {"prompt", "chosen", "rejected"}.
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

from finetune.config import choice_problem
from finetune.data import sources
from finetune.data.adapters import ADAPTERS, Invalid, MissingField
from finetune.data.chat_format import DialogError, check_dialog
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
    if dcfg.max_length < 16:
        problems.append(f"data.max_length={dcfg.max_length}: too short for a Llama 2 chat turn; use >= 16")
    return problems


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
        stats.skip(reason, n)
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
    empty = [f"message {i} ({m['role']})" for i, m in enumerate(msgs) if m["role"] != "system"
             and not m["content"].strip()]
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


