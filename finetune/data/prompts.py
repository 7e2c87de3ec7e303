"""Prompts a run answers: a JSONL of prompts (chat.py, `eval.prompts`) or the data's own held-out dialogs,
as token ids from `chat_format.encode_prompt` (the function family that encodes the training data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune.data import sources
from finetune.data.chat_format import DialogError, check_dialog, encode_prompt
from finetune.data.stats import DataError


@dataclass
class Prompt:
    messages: list[dict]  # system? (user, assistant)* user
    ids: list[int]  # encode_prompt(messages)
    reference: str | None = None  # the dataset's answer, when the prompt comes from a dataset


def to_prompt(sp, messages: list[dict], where: str, reference: str | None = None) -> Prompt:
    try:
        return Prompt(messages, encode_prompt(sp, messages), reference)
    except DialogError as exc:
        raise DataError(f"{where}: {exc}") from None


def prompt_messages(path: str, system: str | None = None) -> list[tuple[list[dict], str]]:
    """(messages, "file:line") from a JSONL file, one prompt per line: {"prompt": "text"} (one user turn,
    optional "system") or {"messages": [{"role", "content"}, ...]} ending with a user message. `system` goes
    first where a line has no system message of its own. Checked here, before any weights load."""
    out = []
    try:
        for record, where in sources.read_records(path):
            if isinstance(record, dict) and isinstance(record.get("messages"), list):
                messages = [dict(m) if isinstance(m, dict) else m for m in record["messages"]]
            elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
                messages = [{"role": "user", "content": record["prompt"]}]
                if record.get("system"):
                    messages.insert(0, {"role": "system", "content": record["system"]})
            else:
                raise DataError(
                    f'{where}: a prompt line needs "prompt" (text) or "messages" '
                    '([{"role": ..., "content": ...}, ...] ending with a user message)'
                )
            if system and messages and isinstance(messages[0], dict) and messages[0].get("role") != "system":
                messages.insert(0, {"role": "system", "content": system})
            try:
                check_dialog(messages, "user")
            except DialogError as exc:
                raise DataError(f"{where}: {exc}") from None
            out.append((messages, where))
    except sources.SourceError as exc:
        raise DataError(str(exc)) from None
    if not out:
        raise DataError(f"{path}: no prompts in the file")
    return out


def read_prompts(path: str, sp, system: str | None = None) -> list[Prompt]:
    return [to_prompt(sp, messages, where) for messages, where in prompt_messages(path, system)]


def check(ecfg) -> list[str]:
    if ecfg.prompts and not Path(ecfg.prompts).is_file():
        return [f"eval.prompts={ecfg.prompts}: no such file; give a JSONL of prompts or leave it unset"]
    if not ecfg.prompts:
        return []
    """Problems in `eval.prompts`, found before any weights load."""
    try:
        prompt_messages(ecfg.prompts)
    except DataError as exc:
        return [f"eval.prompts: {exc}"]
    return []


def fixed_prompts(head: list[dict], dcfg, ecfg, sp) -> list[Prompt]:
    """`eval.samples` prompts: from `eval.prompts`, or the held-out conversations (then the training ones:
    `head`, from the run's one read of the data) with their last answer removed, kept only where the prompt
    fits in `data.max_length`."""
    if ecfg.samples == 0:
        return []
    if ecfg.prompts:
        return read_prompts(ecfg.prompts, sp)[: ecfg.samples]
    out = []
    for i, ex in enumerate(head):
        if "messages" in ex:
            messages, reference = ex["messages"][:-1], ex["messages"][-1]["content"]
        elif "prompt" in ex:  # a preference pair: the prompt, and the chosen answer as the reference
            messages, reference = ex["prompt"], ex["chosen"]
        else:  # raw text (continued pretraining) has no prompt to answer
            continue
        prompt = to_prompt(sp, messages, f"{dcfg.path}: example {i}", reference)
        if len(prompt.ids) <= dcfg.max_length:
            out.append(prompt)
        if len(out) == ecfg.samples:
            break
    return out
