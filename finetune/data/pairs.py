"""Preference pairs as Meta-exact tokens: prompt, chosen and rejected ids for TRL's DPO collator.

DPOTrainer re-tokenizes `prompt`/`chosen`/`rejected` text with the Hugging Face tokenizer, which differs from
Meta's SentencePiece encoding (runs of spaces, turn boundaries); so we encode here and carry the ids in
`llama_*_ids` columns (`training.dpo.collate` feeds them to TRL's collator).
"""

from __future__ import annotations

from finetune.data.chat_format import DialogError, encode_dialog
from finetune.data.stats import DataError, Stats

ID_COLUMNS = ("llama_prompt_ids", "llama_chosen_ids", "llama_rejected_ids")
COLUMNS = ("prompt", "chosen", "rejected", *ID_COLUMNS)


def encode_pair(sp, ex: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids: each `prompt + completion` is exactly Meta's encoding of the dialog
    ending with that answer (and its EOS); the prompt is the part both share."""

    def encode(answer: str):
        return encode_dialog(sp, [*ex["prompt"], {"role": "assistant", "content": answer}], "last")

    (chosen, c_mask), (rejected, r_mask) = encode(ex["chosen"]), encode(ex["rejected"])
    n = min(c_mask.index(1), r_mask.index(1))
    while chosen[:n] != rejected[:n]:  # a piece spanning the prompt/answer boundary: start where they agree
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def tokenize(exs: list[dict], sp, dcfg, stats: Stats) -> dict[str, list]:
    """Our ids in `llama_*_ids` columns, and empty text columns for TRL (its tokenization of them is a no-op
    we never read); pairs over the length limits are dropped or cut per `data.too_long`, counted."""
    return columns(encode, COLUMNS, exs, sp, dcfg, stats)


def columns(encode, names: tuple[str, ...], exs: list[dict], sp, dcfg, stats: Stats) -> dict[str, list]:
    """The `names` columns of every row `encode(ex, sp, dcfg, stats, index)` makes of `exs` (the in-memory form
    of what the streaming build writes; pairs and unpaired examples alike)."""
    cols: dict[str, list] = {c: [] for c in names}
    for i, ex in enumerate(exs):
        for row in encode(ex, sp, dcfg, stats, i):
            for col in names:
                cols[col].append(row[col])
    return cols


def encode(ex: dict, sp, dcfg, stats: Stats, index: int = 0) -> list[dict]:
    """The row of one pair (none when dropped), its length and every count in `stats`; `index` names it in an
    error."""
    try:
        prompt, chosen, rejected = encode_pair(sp, ex)
    except DialogError as exc:
        raise DataError(f"{dcfg.path}: pair {index}: {exc}") from None
    if dcfg.max_prompt_length and len(prompt) > dcfg.max_prompt_length:
        stats.skip("prompt longer than data.max_prompt_length")
        return []
    room = dcfg.max_length - len(prompt)
    if len(prompt) + max(len(chosen), len(rejected)) > dcfg.max_length:
        if dcfg.too_long == "drop" or room < 1:
            stats.dropped_too_long += 1
            return []
        chosen, rejected = chosen[:room], rejected[:room]
        stats.cut += 1  # the answers lose their EOS
    stats.lengths.append(len(prompt) + max(len(chosen), len(rejected)))
    stats.examples += 1
    return [dict(zip(COLUMNS, ("", "", "", prompt, chosen, rejected)))]


rows = encode  # the streaming build's name for it (data.build)


def features() -> dict:
    from datasets import List, Value

    return {c: Value("string") for c in COLUMNS[:3]} | {c: List(Value("int64")) for c in ID_COLUMNS}


def lengths(n):
    """Tokens per row from `n(column)`, the per-row list lengths: the prompt and the longer answer."""
    import numpy as np

    return n("llama_prompt_ids") + np.maximum(n("llama_chosen_ids"), n("llama_rejected_ids"))


def check_examples(exs: list[dict], dcfg) -> None:
    """One error for data that is not preference pairs (identical answers are refused per record by
    `data.examples`, with the file and line)."""
    if not exs or any(k not in exs[0] for k in ("prompt", "chosen", "rejected")):
        raise DataError(
            f"data={dcfg.name} (adapter {dcfg.adapter}) gives {sorted(exs[0]) if exs else 'nothing'}, "
            "not preference pairs (prompt/chosen/rejected); DPO needs chosen and rejected answers: "
            "use a preference data config (data=orca_dpo) or train with trainer=sft"
        )


def nothing_left(dcfg) -> str:
    return (
        f"data={dcfg.name}: every pair is longer than data.max_length={dcfg.max_length} (or its prompt than "
        "data.max_prompt_length); raise them or set data.too_long=truncate"
    )
