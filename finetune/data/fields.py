"""What a record lacks for its adapter, said once for every missing field, with the record's own column that
most likely holds each one: `data.fields.prompt=ticket_question`, not the name that just failed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from finetune.data.adapters import MissingField, get

# The fields each adapter cannot do without (our names; `data.fields.<name>=<your field>` maps them).
REQUIRED = {
    "alpaca": ("instruction", "output"),
    "self_instruct": ("instruction", "instances"),
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "oasst": ("prompt",),
    "oasst_pairs": ("prompt",),
    "hh_rlhf": ("chosen", "rejected"),
    "openai_preference": ("input.messages", "preferred_output", "non_preferred_output"),
    "unpaired": ("messages", "label"),
    "text": ("text",),
}
# Column names that usually hold one of our fields, for a column that is not spelled like it.
SYNONYMS = {
    "prompt": ("question", "instruction", "query", "input", "user", "request", "ask", "q"),
    "instruction": ("question", "prompt", "query", "task", "request", "q"),
    "response": ("answer", "output", "reply", "completion", "assistant", "target", "a"),
    "output": ("answer", "response", "reply", "completion", "target", "a"),
    "chosen": ("preferred", "good", "better", "accepted", "winner"),
    "rejected": ("non_preferred", "bad", "worse", "dispreferred", "loser"),
    "text": ("content", "body", "document", "passage"),
    "label": ("thumbs_up", "good", "desirable", "feedback", "rating"),
    "messages": ("conversation", "conversations", "dialog", "turns", "chat"),
    "conversations": ("messages", "conversation", "dialog", "turns", "chat"),
}


# Adapters whose required field holds a conversation (a list of messages) or a message tree, never a text column.
NESTED = ("messages", "sharegpt", "oasst", "oasst_pairs", "unpaired")


def known_shape(record: dict) -> tuple[str, str, str] | None:
    """(what the record is, the adapter that reads it as it is, the `data=` overrides that give that adapter) for a
    record in a shape one of our data configs reads without any field mapping; None for any other record."""
    for key in ("messages", "conversations"):
        turns = record.get(key)
        first = set(turns[0]) if isinstance(turns, list) and turns and isinstance(turns[0], dict) else set()
        if {"role", "content"} <= first:
            fix = "" if key == "messages" else " data.fields.messages=conversations"
            return "OpenAI-style chat (role/content messages)", "messages", "data=messages" + fix
        if {"from", "value"} <= first:
            fix = "" if key == "conversations" else " data.fields.conversations=messages"
            return "ShareGPT-style chat (from/value turns)", "sharegpt", "data=sharegpt" + fix
    keys = set(record)
    if isinstance(record.get("input"), dict) and {"preferred_output", "non_preferred_output"} <= keys:
        return "an OpenAI preference pair", "openai_preference", "data=orca_dpo"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "a preference pair (prompt, chosen, rejected)", "fields", "data=jsonl"
    if {"chosen", "rejected"} <= keys:
        return "an HH-RLHF pair (two transcripts)", "hh_rlhf", "data=hh_rlhf"
    if {"instruction", "instances"} <= keys:
        return "a Self-Instruct task", "self_instruct", "data=self_instruct"
    if {"instruction", "output"} <= keys:
        return "an Alpaca record (instruction, input, output)", "alpaca", "data=alpaca"
    return None


def other_shape(record, adapter: str) -> str | None:
    """The fix for a record that another of our data configs reads as it is (a ShareGPT file given to
    data=messages); None when its shape is unknown or is the adapter's own."""
    found = known_shape(record) if isinstance(record, dict) else None
    if found is None or found[1] == adapter:
        return None
    return f"it is {found[0]}: use {found[2]} with your data.path"


def required(adapter: str, record: dict, fields: Mapping[str, str]) -> tuple[str, ...]:
    if adapter != "fields":
        return REQUIRED.get(adapter, ())
    pairs = "chosen" in fields or ("response" not in fields and "chosen" in record)
    return ("prompt", "chosen", "rejected") if pairs else ("prompt", "response")


def shape(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(f'"{n}": ...' for n in names) + "}"


def report(record, adapter: str, fields: Mapping[str, str]) -> str | None:
    """Every required field the record lacks, each with the fix, in one message; None if none is missing."""
    names = required(adapter, record if isinstance(record, dict) else {}, fields)
    if not isinstance(record, dict):
        kind = {list: "a JSON list", str: "a JSON string"}.get(type(record), f"a JSON {type(record).__name__}")
        return (
            f"the record is {kind}, not an object; data.adapter={adapter} reads one JSON object per record"
            + (f" like {shape(names)}" if names else "")
            + " (pick the data.adapter that fits your data)"
        )
    missing = [n for n in names if _lacks(record, n, fields)]
    if not missing:
        return None
    paths = ", ".join(f"'{fields.get(n, n)}'" for n in missing)
    lacks = f"missing field{'s' if len(missing) > 1 else ''} {paths} (the record has {sorted(record)})"
    if other := other_shape(record, adapter):
        return f"{lacks}; {other}"
    if len(record) == 1 and (sep := next((c for c in ";\t|" if c in str(next(iter(record)))), None)):
        return (  # a CSV read with commas whose header holds another separator: one column named 'question;answer'
            f"{lacks}; the columns are separated by {sep!r}, not commas: save the file as comma-separated CSV "
            "(or as JSON Lines)"
        )
    if adapter in NESTED and (flat := suggest(["prompt", "response"], [str(k) for k in record], {})).keys() == {
        "prompt",
        "response",
    }:  # one question and one answer column: a conversation list or tree mapped to a text column cannot work
        return f"{lacks}; for one prompt and one answer column use data=jsonl " + " ".join(
            f"data.fields.{n}={flat[n]}" for n in ("prompt", "response")
        )
    used = {fields.get(n, n).split(".")[0] for n in names if n not in missing}
    guesses = suggest(missing, [str(k) for k in record if k not in used], fields)
    fixes = [f"data.fields.{n}={guesses[n]}" for n in missing if n in guesses]
    unknown = [n for n in missing if n not in guesses]
    return (
        f"{lacks}; "
        + (f"set {' '.join(fixes)}" if fixes else "")
        + ("; " if fixes and unknown else "")
        + (f"map {', '.join(f'data.fields.{n}' for n in unknown)} to one of the record's fields" if unknown else "")
        + ", or pick another data.adapter"
    )


def _lacks(record: dict, name: str, fields: Mapping[str, str]) -> bool:
    try:
        get(record, name, fields)
    except MissingField:
        return True
    return False


def score(name: str, path: str, column: str) -> float:
    """How likely `column` holds our field `name` (asked for as `path`): a usual synonym, a name containing the
    asked-for one, or a close spelling."""
    col = column.lower()
    if col in SYNONYMS.get(name, ()) or any(len(s) > 2 and s in col for s in SYNONYMS.get(name, ())):
        return 1.0
    close = max(difflib.SequenceMatcher(None, x.lower(), col).ratio() for x in (path, name))
    contains = any(len(x) > 2 and (x.lower() in col or col in x.lower()) for x in (path, name))
    return close + (0.5 if contains else 0.0)


def suggest(missing: list[str], columns: list[str], fields: Mapping[str, str]) -> dict[str, str]:
    """Our name -> the record's column, each column given once, the likeliest pairs first; a name whose best
    column is no likelier than chance gets none (unless it is the last column left for the last name)."""
    scored = sorted(((score(n, fields.get(n, n), c), n, c) for n in missing for c in columns), reverse=True)
    out: dict[str, str] = {}
    for s, name, column in scored:
        if s >= 0.5 and name not in out and column not in out.values():
            out[name] = column
    left = [c for c in columns if c not in out.values()]
    unmatched = [n for n in missing if n not in out]
    if len(left) == 1 and len(unmatched) == 1:
        out[unmatched[0]] = left[0]
    return out
