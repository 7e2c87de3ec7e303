"""Meta's Llama 2 chat format, token for token, for training and for inference.

Meta's reference (`llama/generation.py`, `chat_completion`) encodes each finished turn on its own as
`BOS + sp.encode(f"[INST] {user} [/INST] {answer} ") + EOS` (note the space after the answer: it becomes the
piece "▁", id 29871, before EOS) and the open turn as `BOS + sp.encode(f"[INST] {user} [/INST]")`; a system
prompt goes inside `<<SYS>>\n…\n<</SYS>>\n\n` at the start of the first user turn. Gluing the dialog into one
string and tokenizing it gives different ids (the text "<s>" is not the BOS id, and the pieces at turn
boundaries change), and the Hugging Face fast tokenizer differs from SentencePiece on runs of spaces (93 of
the 1,175 bundled OpenAssistant messages), so we encode with SentencePiece.

Base (non-chat) Llama 2 models have no chat format of their own (Meta trained them on raw text). We fine-tune
them on this same format, so a fine-tuned base model and a -chat model are prompted the same way; raw text for
continued pretraining is `BOS + text + EOS` (`encode_text`).

`encode_dialog` (training) and `encode_prompt` (inference) share `_turn`, so they cannot drift.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sentencepiece as spm

from finetune.config import UserError

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
BOS_ID, EOS_ID = 1, 2


class DialogError(UserError, ValueError):
    """A conversation that is not system? (user, assistant)* [user]."""


def check_dialog(messages: Sequence[dict], ends_with: str) -> None:
    """Raise DialogError unless `messages` is system? user (assistant user)* ... ending with `ends_with`."""
    if not messages:
        raise DialogError("the conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DialogError(f"message {i} is not {{'role': ..., 'content': <text>}}: {str(m)[:80]}")
    start = 1 if messages[0]["role"] == "system" else 0
    body = messages[start:]
    for j, m in enumerate(body):
        want = "user" if j % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DialogError(
                f"message {j + start} has role '{m['role']}', expected '{want}' "
                "(roles must alternate user/assistant, after an optional system message)"
            )
    if not body:
        raise DialogError("a system message must be followed by a user message")
    if body[-1]["role"] != ends_with:
        raise DialogError(
            f"the conversation ends with {'an assistant' if body[-1]['role'] == 'assistant' else 'a user'} message; "
            + (
                "a training conversation must end with an assistant answer"
                if ends_with == "assistant"
                else "a prompt must end with a user message"
            )
        )


def _fold_system(messages: Sequence[dict]) -> list[dict]:
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] == "system":
        system = msgs.pop(0)["content"]
        msgs[0]["content"] = B_SYS + system + E_SYS + msgs[0]["content"]
    return msgs


def _turn(sp: spm.SentencePieceProcessor, user: str, answer: str | None) -> tuple[list[int], int]:
    """(ids, prompt_len) of one turn: BOS [INST] user [/INST] answer ▁ EOS; prompt_len counts BOS..[/INST]."""
    prompt = [BOS_ID, *_prompt_ids(sp, user.strip())]
    if answer is None:
        return prompt, len(prompt)
    if splits_at_spaces(sp):  # the whole turn's ids, with the prompt's text encoded once (~10% of data prep)
        return prompt + sp.encode(f"{answer.strip()} ") + [EOS_ID], len(prompt)
    full = [BOS_ID] + sp.encode(f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ") + [EOS_ID]
    n = 0  # the prompt is a token prefix of the turn unless a piece spans the boundary; train after the common part
    while n < len(prompt) and full[n] == prompt[n]:
        n += 1
    return full, n


@functools.lru_cache(maxsize=64)  # a preference pair's chosen and rejected dialogs share their prompts
def _prompt_ids(sp: spm.SentencePieceProcessor, user: str) -> tuple[int, ...]:
    return tuple(sp.encode(f"{B_INST} {user} {E_INST}"))


@functools.lru_cache(maxsize=8)
def splits_at_spaces(sp: spm.SentencePieceProcessor) -> bool:
    """Whether no piece of this vocabulary holds "▁" after another character (Llama 2's: none does). Then no
    piece spans the space between "[/INST]" and a (stripped) answer, and with the identity normalizer the turn
    encodes as encode(prompt) + encode(answer + " "): the dummy prefix stands for that space."""
    pieces = (sp.id_to_piece(i) for i in range(sp.get_piece_size()))
    return sp.normalize("a\u00a0b  ") == "▁a\u00a0b▁▁" and not any("▁" in p.lstrip("▁") for p in pieces)


def encode_dialog(
    sp: spm.SentencePieceProcessor, messages: Sequence[dict], train_on: str = "all"
) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask (1 = trained: each answer's tokens, its closing "▁" and EOS) of a finished dialog.

    `train_on="last"` trains only the final answer. The dialog must end with an assistant message.
    """
    check_dialog(messages, "assistant")
    msgs = _fold_system(messages)
    ids: list[int] = []
    mask: list[int] = []
    pairs = list(zip(msgs[::2], msgs[1::2]))
    for k, (user, answer) in enumerate(pairs):
        turn, n = _turn(sp, user["content"], answer["content"])
        trained = train_on == "all" or k == len(pairs) - 1
        ids += turn
        mask += [0] * n + [int(trained)] * (len(turn) - n)
    return ids, mask


def encode_prompt(sp: spm.SentencePieceProcessor, messages: Sequence[dict]) -> list[int]:
    """Token ids Meta's `chat_completion` feeds the model for a dialog ending with a user message."""
    check_dialog(messages, "user")
    msgs = _fold_system(messages)
    ids: list[int] = []
    for user, answer in zip(msgs[::2], msgs[1::2]):
        ids += _turn(sp, user["content"], answer["content"])[0]
    return ids + _turn(sp, msgs[-1]["content"], None)[0]


def encode_text(sp: spm.SentencePieceProcessor, text: str) -> tuple[list[int], list[int]]:
    """Raw text for continued pretraining: BOS text EOS, every token after BOS trained."""
    ids = [BOS_ID] + sp.encode(text) + [EOS_ID]
    return ids, [0] + [1] * (len(ids) - 1)


# The same format as a Jinja chat template, saved with every tokenizer we write so that stock
# `tokenizer.apply_chat_template` users get the right text (Meta's -chat models ship the same template).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
