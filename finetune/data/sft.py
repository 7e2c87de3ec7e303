"""SFT tokens: each conversation (or raw text) as Meta-exact ids and a label mask, within `data.max_length`."""

from __future__ import annotations

from finetune.data.chat_format import encode_dialog, encode_text
from finetune.data.stats import DataError, Stats

Example = dict
COLUMNS = ("input_ids", "assistant_masks")  # TRL trains exactly the masked-in tokens


def check_examples(exs: list[Example], dcfg) -> None:
    """One error for preference pairs given to SFT."""
    if any("prompt" in ex for ex in exs):
        raise DataError(
            f"data={dcfg.name} (adapter {dcfg.adapter}) gives preference pairs (prompt/chosen/"
            "rejected); SFT needs conversations or text: use an SFT data config, or trainer=dpo"
        )
    if any("label" in ex for ex in exs):
        raise DataError(
            f"data={dcfg.name} (adapter {dcfg.adapter}) gives answers marked good or bad (label); SFT "
            "would learn the bad ones too: train them with trainer=kto"
        )


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
        return [(ids[i : i + limit], mask[i : i + limit]) for i in range(0, len(ids), limit)]
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


def rows(ex: Example, sp, dcfg, stats: Stats, index: int = 0) -> list[dict]:
    """The rows of one example for the streaming build (data.build); `index` is unused (SFT errors name the line)."""
    return [{"input_ids": ids, "assistant_masks": mask} for ids, mask in encode(ex, sp, dcfg, stats)]


def features() -> dict:
    from datasets import List, Value

    return {"input_ids": List(Value("int32")), "assistant_masks": List(Value("int64"))}


def lengths(n):
    """Tokens per row from `n(column)`, the per-row list lengths."""
    return n("input_ids")


def tokenize(exs: list[Example], sp, dcfg, stats: Stats) -> dict[str, list]:
    """Columns `input_ids` + `assistant_masks` of the kept pieces; every count goes to `stats`."""
    cols: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    for ex in exs:
        for ids, mask in encode(ex, sp, dcfg, stats):
            cols["input_ids"].append(ids)
            cols["assistant_masks"].append(mask)
            stats.lengths.append(len(ids))
    stats.examples += len(cols["input_ids"])
    return cols


def nothing_left(dcfg) -> str:
    return (
        f"data={dcfg.name}: every example is longer than data.max_length={dcfg.max_length}; "
        "raise data.max_length or set data.too_long=truncate"
    )
