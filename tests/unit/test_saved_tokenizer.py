"""The tokenizer we save gives Meta's ids through stock stacks: transformers' apply_chat_template(tokenize=True) and
the Rust `tokenizers` reader of tokenizer.json (TGI's), on the cases where Hugging Face used to differ. The cases
that stay different are shown too, as the model card states them."""

from __future__ import annotations

import json
import random

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as RustTokenizer

from tests.conftest import ROOT
from finetune.config import ModelConfig
from finetune.data import adapters, chat_format, sources
from finetune.model import tokenizer as tok

SP = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
SYSTEM = {"role": "system", "content": "You are  terse.\n\nAnswer in one line."}
DIALOGS = {
    "single": [{"role": "user", "content": "hi"}],
    "multi-turn": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And now?"},
    ],
    "system + multi-turn": [
        SYSTEM,
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ],
    "runs of spaces": [
        {"role": "user", "content": 'def f():\n    return  {"a":   1}\n'},
        {"role": "assistant", "content": "x     y"},
        {"role": "user", "content": "a" + " " * 40 + "b"},
    ],
    "non-ASCII": [
        SYSTEM,
        {"role": "user", "content": "Grüße aus Köln — 日本語は？ 😀🦙 \u00a0ok"},
        {"role": "assistant", "content": "Привет! ¿Qué tal? ß\u3000"},
        {"role": "user", "content": "ﬁn ⁇"},
    ],
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tokenizer folder as training writes it into adapter/ (and export into merged/)."""
    out = tmp_path_factory.mktemp("tokenizer")
    tok.load_tokenizer(ModelConfig(name="t", path="unused", tokenizer=str(ROOT / "data/llama2-tokenizer"))).save(out)
    return out


@pytest.fixture(scope="module")
def stock(saved):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(saved)  # what a user of the folder (or vLLM) loads


def stock_ids(stock, messages):
    return stock.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.mark.parametrize("name", DIALOGS)
def test_stock_apply_chat_template_gives_the_trained_ids(stock, saved, name):
    want = chat_format.encode_prompt(SP, DIALOGS[name])
    assert stock_ids(stock, DIALOGS[name]) == want
    text = stock.apply_chat_template(DIALOGS[name], add_generation_prompt=True, tokenize=False)
    assert stock(text, add_special_tokens=False).input_ids == want  # rendered text, tokenized as documented
    rust = RustTokenizer.from_file(str(saved / "tokenizer.json"))  # TGI and transformers 4 read this file as is
    assert rust.encode(text, add_special_tokens=False).ids == want


def test_every_bundled_oasst_prompt_is_exact_through_the_saved_tokenizer(stock):
    convs = [
        ex["messages"]
        for rec, _ in sources.read_records(str(ROOT / "data/sft/oasst-en100/en_100_tree.jsonl"))
        for ex in adapters.oasst(rec, {})
    ]
    prompts = [c[: i + 1] for c in convs for i, m in enumerate(c) if m["role"] == "user"]
    wrong = [p for p in prompts if stock_ids(stock, p) != chat_format.encode_prompt(SP, p)]
    assert len(prompts) > 100 and wrong == []


def test_exact_merges_reproduce_sentencepiece_on_random_text(saved):
    """Runs of spaces, newlines, digits, punctuation, non-ASCII and byte fallback, anywhere but a leading space."""
    rust = RustTokenizer.from_file(str(saved / "tokenizer.json"))
    rnd = random.Random(0)
    alphabet = list("ab c  xyz\n\t.,!?0123\"'{}()") + [
        " " * 3,
        " " * 4,
        " " * 17,
        " " * 33,
        "é",
        "日本",
        "😀",
        "\u00a0",
        "\u3000",
        "Ж",
        "\u200b",
        "⁇",
    ]
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 50))).lstrip(" ") or "x" for _ in range(3000)]
    texts += ["x" + " " * k + "y" + " " * j + '"z' for k in range(40) for j in range(0, 40, 7)]
    assert [t for t in texts if rust.encode(t, add_special_tokens=False).ids != SP.encode(t)] == []


def test_saved_config_keeps_meta_behaviour(saved, stock):
    cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert cfg["legacy"] is True and cfg["add_bos_token"] is True and cfg["add_eos_token"] is False
    assert cfg["pad_token"] == "<unk>" and cfg["chat_template"] == chat_format.CHAT_TEMPLATE
    assert stock("Hello world").input_ids == [1] + SP.encode("Hello world")  # raw text: one BOS, no EOS
    assert stock.pad_token_id == 0 and (saved / "tokenizer.model").is_file() and (saved / "LICENSE-LLAMA2").is_file()


def test_what_stays_different_is_what_the_card_says(stock):
    """Documented, not fixed: literal special-token text in a message, and raw text starting with a space."""
    literal = [{"role": "user", "content": "what does </s> mean?"}]
    assert stock_ids(stock, literal) != chat_format.encode_prompt(SP, literal)
    assert 2 in stock_ids(stock, literal) and 2 not in chat_format.encode_prompt(SP, literal)
    assert stock(" leading", add_special_tokens=False).input_ids != SP.encode(" leading")
    text = stock.apply_chat_template(DIALOGS["multi-turn"], add_generation_prompt=True, tokenize=False)
    assert stock(text).input_ids[:2] == [1, 1]  # the default add_special_tokens=True adds a second BOS
