"""The preflight passes the real pipeline's data and blocks each planted failure with its reason."""

from __future__ import annotations

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from tests.conftest import ROOT
from finetune.config import DataConfig, ModelConfig
from finetune.data import examples, preflight
from finetune.data import load as data_load
from finetune.data.stats import DataError, Stats
from finetune.model import tokenizer as tokenizer_mod


def cfg(**overrides) -> DataConfig:
    base = {
        "name": "oasst",
        "adapter": "oasst",
        "path": str(ROOT / "data/sft/oasst-en100/en_100_tree.jsonl"),
        "max_samples": 24,
        "cache": False,
    }
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


def tokenizer():
    return tokenizer_mod.load_tokenizer(ModelConfig(name="llama2", path=str(ROOT / "data/llama2-tokenizer")))


@pytest.fixture(scope="module")
def loaded():
    tok = tokenizer()
    dcfg = cfg()
    p = data_load.load(dcfg, tok)
    return tok, p.train, p.stats, examples.examples(dcfg), dcfg


def test_the_real_pipeline_passes(loaded):
    tok, train, stats, exs, dcfg = loaded
    verdict = preflight.run(tok, train, stats, exs, dcfg)
    assert verdict.ok and verdict.failures == [] and verdict.report().startswith("preflight: PASS")
    assert "the inference prompt is the training prefix of every answer (24 conversations)" in verdict.passed


def test_a_planted_pad_equal_to_eos_is_blocked(loaded):
    _, train, stats, exs, dcfg = loaded
    planted = tokenizer()
    planted.hf.pad_token = planted.hf.eos_token  # what many Llama 2 recipes do
    verdict = preflight.run(planted, train, stats, exs, dcfg)
    assert not verdict.ok
    assert verdict.failures == [
        "the pad token is EOS (id 2) or unset: padding would mask EOS out of the labels and "
        "the model would never stop; use a distinct pad token (Llama 2: <unk>, id 0)"
    ]


def planted(rows: list[tuple[list[int], list[int]]]) -> Dataset:
    return Dataset.from_dict({"input_ids": [r[0] for r in rows], "assistant_masks": [r[1] for r in rows]})


GOOD = ([1, 518, 25580, 29962, 7251, 518, 29914, 25580, 29962, 15043, 29871, 2], [0] * 9 + [1, 1, 1])


@pytest.mark.parametrize(
    "row, failure",
    [
        (([1] + GOOD[0], [0] + GOOD[1]), "1 examples start without BOS or hold two BOS in a row (first: #[1])"),
        ((GOOD[0], [0] * 12), "1 examples have an empty label mask (first: #[1]): they train nothing"),
        ((GOOD[0][:-1], GOOD[1][:-1]), "1 examples lack a trained EOS although they were not cut (first: #[1])"),
        ((GOOD[0], GOOD[1][:-1] + [0]), "1 examples lack a trained EOS although they were not cut (first: #[1])"),
    ],
    ids=["double BOS", "empty mask", "no EOS", "EOS masked"],
)
def test_planted_token_failures_are_blocked(loaded, row, failure):
    tok, _, _, _, dcfg = loaded
    verdict = preflight.run(tok, planted([GOOD, row]), Stats(), [], dcfg)
    assert not verdict.ok and any(f.startswith(failure) for f in verdict.failures), verdict.report()


def test_every_answer_cut_fails_and_require_stops_with_the_reason():
    tok, dcfg = tokenizer(), cfg(max_length=24, too_long="truncate", max_samples=None)
    prepared = data_load.load(dcfg, tok)
    train, stats = prepared.train, prepared.stats
    assert stats.cut == len(train) > 0
    with pytest.raises(preflight.PreflightError) as err:
        preflight.require(tok, prepared, dcfg)
    assert isinstance(err.value, DataError)  # train.py's console prints it and exits 2
    assert f"EOS is in no example's labels (all {len(train)} were cut at data.max_length=24)" in str(err.value)


def rendered_then_tokenized(sp, messages: list[dict]) -> list[int]:
    """The prompt a stock stack builds: the dialog rendered as text (Meta's format, "<s>" written as text) and
    tokenized whole. The text "<s>" is not the BOS id, and turn boundaries tokenize differently."""
    msgs = list(messages)
    system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else None
    text = ""
    for i, m in enumerate(msgs):
        content = m["content"].strip()
        if i == 0 and system:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        text += f"<s>[INST] {content} [/INST]" if m["role"] == "user" else f" {content} </s>"
    return sp.encode(text)


def test_an_inference_prompt_that_is_not_the_training_prefix_stops_training(loaded, monkeypatch):
    """chat.py prompts with `chat_format.encode_prompt` and training encodes with `encode_dialog`; they share one
    turn encoder, so the bundled data cannot fail this check. The drift it guards against is planted here: the
    inference side replaced by the rendered-then-tokenized prompt. train.py must stop with the reason."""
    import types

    from finetune.data import chat_format

    tok, train, stats, exs, dcfg = loaded
    for module in (chat_format, preflight):  # wherever the preflight takes the inference encoder from
        if hasattr(module, "encode_prompt"):
            monkeypatch.setattr(module, "encode_prompt", rendered_then_tokenized)
    with pytest.raises(preflight.PreflightError) as err:
        preflight.require(tok, types.SimpleNamespace(train=train, stats=stats, sample=exs), dcfg)
    assert (
        "inference prompt != training prefix in 24 of 24 conversations: [\"answer 1: the inference prompt's "
        'tokens differ from the training tokens"]'
    ) in str(err.value)


def orca(**overrides) -> DataConfig:
    base = {
        "name": "orca_dpo",
        "adapter": "openai_preference",
        "max_prompt_length": 192,
        "cache": False,
        "path": str(ROOT / "data/dpo/orca-dpo-pairs-validation/validation.jsonl"),
    }
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


def test_answers_cut_in_most_pairs_put_a_warning_on_the_headline():
    """The tiny ORPO/SimPO recipes' lengths (256, truncate) cut 169 of the 174 Orca pairs that fit; the lengths the
    README gives (512, drop) cut none."""
    tok = tokenizer()
    dcfg = orca(max_length=256, too_long="truncate")
    p = data_load.load(dcfg, tok, "orpo")
    headline = preflight.run(tok, p.train, p.stats, p.sample, dcfg).report().splitlines()[0]
    assert headline == (
        "preflight: PASS -- WARNING: 97% of the examples (169 of 174) have a cut answer: the model "
        "learns answers that never end; raise data.max_length (now 256) or set data.too_long=drop"
    )
    readme = orca(max_length=512, too_long="drop")
    p = data_load.load(readme, tok, "orpo")
    verdict = preflight.run(tok, p.train, p.stats, p.sample, readme)
    assert p.stats.cut == 0 and p.stats.examples == 102 and verdict.report().splitlines()[0] == "preflight: PASS"
