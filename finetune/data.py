"""Datasets in, Meta-exact Llama 2 token ids and label masks out.

Adapters (a name -> function registry) turn raw records into one of two forms:
  SFT:        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  preference: {"prompt": [messages ending with user], "chosen": str, "rejected": str}
`load()` reads the source, adapts, splits and tokenizes with `finetune.chat_format`, and returns
`datasets.Dataset`s ready for TRL (`input_ids` + `assistant_masks` for SFT).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from finetune.chat_format import DialogError, encode_dialog

Record = dict
Example = dict


class DataError(ValueError):
    """Bad input data: names the file, line and field, and the fix."""


# --------------------------------------------------------------------------------------------- adapters
def oasst_conversations(tree: Record, where: str) -> Iterator[Example]:
    """One conversation per message tree, following the best-ranked reply (rank 0) at every turn."""
    node, messages = _field(tree, "prompt", where), []
    while node is not None:
        role = {"prompter": "user", "assistant": "assistant"}.get(node.get("role"))
        if role is None:
            raise DataError(f"{where}: message role {node.get('role')!r} is neither 'prompter' nor 'assistant'")
        messages.append({"role": role, "content": node["text"]})
        replies = [r for r in node.get("replies", []) if not r.get("deleted")]
        node = min(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0), default=None)
    if messages and messages[-1]["role"] == "user":  # a tree can end on an unanswered prompt
        messages.pop()
    if messages:
        yield {"messages": messages}


def chat_messages(record: Record, where: str) -> Iterator[Example]:
    """OpenAI-style {"messages": [{"role", "content"}]}."""
    yield {"messages": [{"role": m["role"], "content": m["content"]} for m in _field(record, "messages", where)]}


def openai_preference(record: Record, where: str) -> Iterator[Example]:
    """OpenAI preference JSONL: {input: {messages}, preferred_output: [msg], non_preferred_output: [msg]}."""
    prompt = _field(_field(record, "input", where), "messages", where)
    chosen = _field(record, "preferred_output", where)[-1]["content"]
    rejected = _field(record, "non_preferred_output", where)[-1]["content"]
    yield {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
           "chosen": chosen, "rejected": rejected}


ADAPTERS: dict[str, Callable[[Record, str], Iterator[Example]]] = {
    "oasst": oasst_conversations,
    "messages": chat_messages,
    "openai_preference": openai_preference,
}


def _field(record: Record, name: str, where: str):
    if not isinstance(record, dict) or name not in record:
        keys = list(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: missing field '{name}' (record has {keys}); map your field with "
                        f"data.fields.{name}=<your field> and data=jsonl, or pick another data.adapter")
    return record[name]


# --------------------------------------------------------------------------------------------- sources
def read_records(path: str) -> Iterator[tuple[Record, str]]:
    """(record, "file:line") pairs from a .jsonl/.jsonl.gz file or a folder of them, in a stable order."""
    p = Path(path)
    files = sorted(p.glob("*.jsonl*")) if p.is_dir() else [p]
    for f in files:
        opener = __import__("gzip").open if f.suffix == ".gz" else open
        with opener(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{f}:{lineno}: not UTF-8 (byte {exc.start} of the line); "
                                    "re-encode the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    yield json.loads(line), f"{f}:{lineno}"
                except json.JSONDecodeError as exc:
                    raise DataError(f"{f}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def check(dcfg) -> list[str]:
    """Problems in a data config that need no reading of the data."""
    problems = []
    if dcfg.adapter not in ADAPTERS:
        problems.append(f"data.adapter={dcfg.adapter}: unknown; valid adapters: {', '.join(sorted(ADAPTERS))}")
    if not Path(dcfg.path).exists():
        problems.append(f"data.path={dcfg.path}: no such file or folder")
    if not 0.0 <= dcfg.eval_fraction < 1.0:
        problems.append(f"data.eval_fraction={dcfg.eval_fraction}: must be in [0, 1)")
    if dcfg.too_long not in ("drop", "truncate"):
        problems.append(f"data.too_long={dcfg.too_long}: use drop or truncate")
    if dcfg.train_on not in ("all", "last"):
        problems.append(f"data.train_on={dcfg.train_on}: use all or last")
    return problems


# --------------------------------------------------------------------------------------------- pipeline
@dataclass
class Stats:
    examples: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.examples} examples; too long: {self.dropped_too_long} dropped, {self.truncated} "
                f"truncated (answer cut, EOS lost)")


def examples(dcfg) -> list[Example]:
    """Adapted examples, shuffled deterministically by `data.seed`, capped at `data.max_samples`."""
    adapter = ADAPTERS[dcfg.adapter]
    out = [ex for record, where in read_records(dcfg.path) for ex in adapter(record, where)]
    if dcfg.system_prompt:
        for ex in out:
            if "messages" in ex and ex["messages"][0]["role"] != "system":
                ex["messages"].insert(0, {"role": "system", "content": dcfg.system_prompt})
    random.Random(dcfg.seed).shuffle(out)
    if dcfg.max_samples:
        out = out[: dcfg.max_samples]
    if not out:
        raise DataError(f"data.path={dcfg.path}: no examples after adapting with '{dcfg.adapter}'")
    return out


def split(items: list, eval_fraction: float) -> tuple[list, list]:
    n_eval = int(round(len(items) * eval_fraction))
    return items[n_eval:], items[:n_eval]


def tokenize_sft(exs: Iterable[Example], sp, dcfg, stats: Stats) -> dict[str, list]:
    cols: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    for i, ex in enumerate(exs):
        try:
            ids, mask = encode_dialog(sp, ex["messages"], train_on=dcfg.train_on)
        except DialogError as exc:
            raise DataError(f"{dcfg.path}: example {i}: {exc}") from None
        if len(ids) > dcfg.max_length:
            if dcfg.too_long == "drop" or not any(mask[: dcfg.max_length]):
                stats.dropped_too_long += 1
                continue
            ids, mask = ids[: dcfg.max_length], mask[: dcfg.max_length]
            stats.truncated += 1
        cols["input_ids"].append(ids)
        cols["assistant_masks"].append(mask)
        stats.examples += 1
    return cols


def load(dcfg, tokenizer) -> tuple[object, object | None, Stats]:
    """(train, eval or None, stats) as tokenized `datasets.Dataset`s for SFT."""
    from datasets import Dataset

    exs = examples(dcfg)
    if "messages" not in exs[0]:
        raise DataError(f"data={dcfg.name} gives preference pairs (prompt/chosen/rejected); "
                        "SFT needs conversations: use an SFT data config or trainer=dpo")
    train, evals = split(exs, dcfg.eval_fraction)
    stats = Stats()
    train_ds = Dataset.from_dict(tokenize_sft(train, tokenizer.sp, dcfg, stats))
    eval_ds = Dataset.from_dict(tokenize_sft(evals, tokenizer.sp, dcfg, stats)) if evals else None
    if len(train_ds) == 0:
        raise DataError(f"data={dcfg.name}: every example is longer than data.max_length={dcfg.max_length}; "
                        "raise data.max_length or set data.too_long=truncate")
    return train_ds, eval_ds, stats
