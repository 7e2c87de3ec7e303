"""Adapters: a name -> function registry turning one raw record into TRL's standard example forms.

  SFT (conversational): {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  preference:           {"prompt": [messages ending with a user message], "chosen": str, "rejected": str}
  raw text:             {"text": str}  (continued pretraining: every token trained)
  unpaired (KTO):       {"messages": [... ending with the assistant's answer], "label": bool}

Each adapter is `fn(record, fields) -> iterator of examples`; `fields` is `data.fields` (our name -> your field,
dotted for nesting: `data.fields.prompt=input.question`). A missing field raises `MissingField`; a record whose
content breaks the format (roles out of order, a conversation ending on a user turn) raises `Invalid`, which
`data.invalid=skip` turns into a counted skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

Record = dict
Example = dict
ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",  # OpenAI
    "human": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "prompter": "user",
}  # ShareGPT / OpenAssistant spellings


class MissingField(KeyError):
    def __str__(self) -> str:
        return self.args[0]


class Invalid(ValueError):
    """A record whose content does not fit the format; skippable with `data.invalid=skip`."""


def get(record: Record, name: str, fields: Mapping[str, str], default=MissingField):
    """`record[fields.get(name, name)]`, following dots into nested dicts and lists."""
    path = fields.get(name, name)
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif default is MissingField:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            hint = f"data.fields.{name}={path}" if name in fields else f"data.fields.{name}=<your field>"
            raise MissingField(
                f"missing field '{path}' (the record has {keys}); if your data names it "
                f"differently, map it with {hint}, or pick another data.adapter"
            )
        else:
            return default
    return node


def _text(value, what: str) -> str:
    """A message content: a string, or OpenAI content parts [{"type": "text", "text": ...}]."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(p["text"] for p in value)
    if not isinstance(value, str):
        raise Invalid(f"{what} is {type(value).__name__}, not text")
    return value


def _message(m, role_key: str, content_key: str) -> dict:
    if not isinstance(m, dict) or role_key not in m or content_key not in m:
        raise Invalid(f"message {str(m)[:80]} lacks '{role_key}' or '{content_key}'")
    role = ROLES.get(str(m[role_key]).lower())
    if role is None:
        raise Invalid(
            f"message role '{m[role_key]}' is not one of {sorted(set(ROLES))}; Llama 2 chat has "
            "system, user and assistant turns only"
        )
    return {"role": role, "content": _text(m[content_key], f"the content of a {role} message")}


# ------------------------------------------------------------------------------------------ instructions
def _user_turn(instruction: str, inp) -> str:
    """The instruction, then the input (if any) after a blank line."""
    inp = "" if inp is None else _text(inp, "input")
    return f"{instruction.strip()}\n\n{inp.strip()}" if inp.strip() else instruction


def _single_turn(user: str, answer: str) -> Example:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def alpaca(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Alpaca {instruction, input, output}: the input (if any) follows the instruction after a blank line."""
    instruction = _text(get(record, "instruction", fields), "instruction")
    yield _single_turn(
        _user_turn(instruction, get(record, "input", fields, default=None)),
        _text(get(record, "output", fields), "output"),
    )


def self_instruct(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Self-Instruct seed tasks {instruction, instances: [{input, output}]}: one conversation per instance."""
    instruction = _text(get(record, "instruction", fields), "instruction")
    for instance in get(record, "instances", fields):
        if not isinstance(instance, dict):
            raise Invalid(f"an instance is {type(instance).__name__}, not {{input, output}}")
        output = _text(instance.get("output"), "an instance's output")
        yield _single_turn(_user_turn(instruction, instance.get("input")), output)


# ------------------------------------------------------------------------------------------ conversations
def messages(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """OpenAI-style {"messages": [{"role", "content"}]} (system, user, assistant)."""
    yield {"messages": [_message(m, "role", "content") for m in get(record, "messages", fields)]}


def sharegpt(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """ShareGPT {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}."""
    yield {"messages": [_message(m, "from", "value") for m in get(record, "conversations", fields)]}


def oasst(tree: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """An OpenAssistant message tree -> the conversation that follows the best-ranked reply (lowest `rank`) at every
    turn. A trailing unanswered prompt is dropped (trees often end on one); a tree with no answer yields nothing."""
    node, msgs = get(tree, "prompt", fields), []
    while node is not None:
        msgs.append(_message(node, "role", "text"))
        node = min(_replies(node), key=lambda r: (r.get("rank") is None, r.get("rank") or 0), default=None)
    if msgs[-1]["role"] == "user":
        msgs.pop()
    if msgs:
        yield {"messages": msgs}


def oasst_pairs(tree: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Preference pairs from an OpenAssistant tree: under every prompt, the best-ranked reply against each
    worse-ranked sibling (ties and unranked replies give no pair); the prompt is the path from the root."""

    def walk(node: Record, path: list[dict]) -> Iterator[Example]:
        path = path + [_message(node, "role", "text")]
        ranked = sorted((r for r in _replies(node) if r.get("rank") is not None), key=lambda r: r["rank"])
        if path[-1]["role"] == "user" and ranked:
            best = ranked[0]
            for worse in ranked[1:]:
                if worse["rank"] > best["rank"]:
                    yield {"prompt": path, "chosen": best["text"], "rejected": worse["text"]}
        for reply in _replies(node):
            yield from walk(reply, path)

    yield from walk(get(tree, "prompt", fields), [])


def _replies(node: Record) -> list[Record]:
    return [r for r in node.get("replies") or [] if not r.get("deleted")]


# ------------------------------------------------------------------------------------------ preferences
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_split(transcript: str) -> tuple[list[dict], str]:
    """'\\n\\nHuman: … \\n\\nAssistant: …' -> (prompt messages, final answer), split at the last '\\n\\nAssistant:'."""
    parts = HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 5 or parts[-2] != "Assistant":
        raise Invalid("not an hh-rlhf transcript ('\\n\\nHuman: …\\n\\nAssistant: …' ending with an Assistant turn)")
    turns: list[dict] = []
    for who, text in zip(parts[1:-2:2], parts[2:-2:2]):
        role = "user" if who == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:  # 4 upstream transcripts repeat a speaker: one turn, joined
            turns[-1]["content"] += "\n\n" + text.strip()
        else:
            turns.append({"role": role, "content": text.strip()})
    return turns, parts[-1].strip()


def hh_rlhf(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Anthropic HH-RLHF {chosen, rejected} full transcripts; both must share the prompt before the last answer."""
    prompt, chosen = _hh_split(_text(get(record, "chosen", fields), "chosen"))
    prompt_r, rejected = _hh_split(_text(get(record, "rejected", fields), "rejected"))
    if prompt != prompt_r:
        raise Invalid(
            "chosen and rejected continue different conversations (they differ before the last "
            "'\\n\\nAssistant:'), so they are no preference pair"
        )
    yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def openai_preference(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """OpenAI preference JSONL: {input: {messages}, preferred_output: [msg], non_preferred_output: [msg]}."""
    prompt = [_message(m, "role", "content") for m in get(record, "input.messages", fields)]
    sides = []
    for name in ("preferred_output", "non_preferred_output"):
        out = get(record, name, fields)
        last = _message(out[-1], "role", "content") if isinstance(out, list) and out else None
        if last is None or last["role"] != "assistant":
            raise Invalid(f"{name} must be a list ending with an assistant message")
        sides.append(last["content"])
    yield {"prompt": prompt, "chosen": sides[0], "rejected": sides[1]}


def unpaired(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """One answer with thumbs-up/down feedback (KTO): {"messages": [..., the assistant's answer], "label": bool}."""
    label = get(record, "label", fields)
    if label not in (True, False) or not isinstance(label, (bool, int)):
        raise Invalid(f"label is {label!r}, not true or false (a thumbs-up or thumbs-down on the last answer)")
    yield {"messages": [_message(m, "role", "content") for m in get(record, "messages", fields)], "label": bool(label)}


# ------------------------------------------------------------------------------------------ any schema
def mapped(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Any schema, by `data.fields`: prompt (+ optional input, system) and response -> one conversation; prompt,
    chosen and rejected -> a preference pair. A prompt may also be a list of messages."""
    system = get(record, "system", fields, default=None)
    prompt = get(record, "prompt", fields)
    if isinstance(prompt, list):
        msgs = [_message(m, "role", "content") for m in prompt]
    else:
        msgs = [{"role": "user", "content": _user_turn(_text(prompt, "prompt"), get(record, "input", fields, None))}]
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": _text(system, "system")})
    if "chosen" in fields or ("response" not in fields and "chosen" in record):
        yield {
            "prompt": msgs,
            "chosen": _answer(get(record, "chosen", fields), "chosen"),
            "rejected": _answer(get(record, "rejected", fields), "rejected"),
        }
    else:
        yield {
            "messages": msgs + [{"role": "assistant", "content": _answer(get(record, "response", fields), "response")}]
        }


def _answer(value, what: str) -> str:
    """A response: text, or a list of messages whose last one is the assistant's."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return _text(value[-1]["content"], what)
    return _text(value, what)


def text(record: Record, fields: Mapping[str, str]) -> Iterator[Example]:
    """Raw text for continued pretraining (`data.fields.text=<your field>`, default `text`)."""
    yield {"text": _text(get(record, "text", fields), "text")}


ADAPTERS: dict[str, Callable[[Record, Mapping[str, str]], Iterator[Example]]] = {
    "alpaca": alpaca,
    "self_instruct": self_instruct,
    "messages": messages,
    "sharegpt": sharegpt,
    "oasst": oasst,
    "oasst_pairs": oasst_pairs,
    "hh_rlhf": hh_rlhf,
    "openai_preference": openai_preference,
    "unpaired": unpaired,
    "fields": mapped,
    "text": text,
}
