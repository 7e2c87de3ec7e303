"""Unpaired preference examples (KTO) as Meta-exact tokens: one prompt, one answer, and whether it is good.

Examples are {"messages": [..., the assistant's answer], "label": true|false} (adapter `unpaired`: thumbs-up or
thumbs-down feedback on one answer), or preference pairs {"prompt", "chosen", "rejected"} from any pair adapter,
each split into a good and a bad example with the same prompt (the split TRL's `unpair_preference_dataset`
makes). Ids as for pairs (`data.pairs`): prompt + answer is exactly Meta's encoding of the dialog ending with
that answer and its EOS. The rows carry them in `llama_*_ids` columns with empty `prompt`/`completion` text for
TRL, whose own tokenization of it we never read (`training.kto.collate`).
"""

from __future__ import annotations

from finetune.data import pairs
from finetune.data.chat_format import DialogError, encode_dialog
from finetune.data.stats import DataError, Stats

ID_COLUMNS = ("llama_prompt_ids", "llama_completion_ids")
COLUMNS = ("prompt", "completion", "label", *ID_COLUMNS)


def split(sp, ex: dict) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, answer ids, good?) of one example: two for a pair (chosen good, rejected bad), one otherwise."""
    if "prompt" in ex:
        prompt, chosen, rejected = pairs.encode_pair(sp, ex)
        return [(prompt, chosen, True), (prompt, rejected, False)]
    ids, mask = encode_dialog(sp, ex["messages"], "last")
    start = mask.index(1)  # the last answer (and its EOS) is the trained end of the dialog
    return [(ids[:start], ids[start:], bool(ex["label"]))]


def encode(ex: dict, sp, dcfg, stats: Stats, index: int = 0) -> list[dict]:
    """The rows of one example (none when dropped), each counted in `stats`; `index` names it in an error."""
    try:
        parts = split(sp, ex)
    except DialogError as exc:
        raise DataError(f"{dcfg.path}: example {index}: {exc}") from None
    rows = []
    for prompt, answer, label in parts:
        if dcfg.max_prompt_length and len(prompt) > dcfg.max_prompt_length:
            stats.skip("prompt longer than data.max_prompt_length")
            continue
        room = dcfg.max_length - len(prompt)
        if len(answer) > room:
            if dcfg.too_long == "drop" or room < 1:
                stats.dropped_too_long += 1
                continue
            answer = answer[:room]
            stats.cut += 1  # the answer loses its EOS
        stats.lengths.append(len(prompt) + len(answer))
        stats.examples += 1
        rows.append(dict(zip(COLUMNS, ("", "", label, prompt, answer))))
    return rows


rows = encode  # the streaming build's name for it (data.build)


def tokenize(exs: list[dict], sp, dcfg, stats: Stats) -> dict[str, list]:
    """Columns of every kept row of `exs`."""
    return pairs.columns(encode, COLUMNS, exs, sp, dcfg, stats)


def features() -> dict:
    from datasets import List, Value

    return {
        "prompt": Value("string"),
        "completion": Value("string"),
        "label": Value("bool"),
        **{c: List(Value("int64")) for c in ID_COLUMNS},
    }


def lengths(n):
    """Tokens per row from `n(column)`, the per-row list lengths."""
    return n("llama_prompt_ids") + n("llama_completion_ids")


def check_examples(exs: list[dict], dcfg) -> None:
    """One error for data that is neither answers marked good/bad nor preference pairs."""
    bad = next((ex for ex in exs if "prompt" not in ex and "label" not in ex), None)
    if not exs or bad is not None:
        raise DataError(
            f"data={dcfg.name} (adapter {dcfg.adapter}) gives {sorted(bad) if bad else 'nothing'}, "
            'not answers marked good or bad; KTO needs {"messages": [...], "label": true|false} '
            "records (data=jsonl data.adapter=unpaired, data.fields.label=<your field>) or preference "
            "pairs (data=orca_dpo), which are split into a good and a bad answer"
        )


def nothing_left(dcfg) -> str:
    return (
        f"data={dcfg.name}: every example is longer than data.max_length={dcfg.max_length} (or its prompt than "
        "data.max_prompt_length); raise them or set data.too_long=truncate"
    )
