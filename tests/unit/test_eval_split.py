"""The held-out split is held out: no conversation (or preference pair) is in both the training rows and the eval
rows training reads, the two together are every example used, and the held-out examples that sample prompts,
export verification and evaluate.py take from `examples.splits` are exactly the eval rows.

An eval set that overlaps training keeps its size, so a size check passes; these compare the token rows."""

from __future__ import annotations

import types

import pytest
import sentencepiece as spm
from omegaconf import OmegaConf

from tests.conftest import ROOT
from finetune.config import DataConfig
from finetune.data import examples, pairs, sft
from finetune.data import load as data_load
from finetune.data.stats import Stats

SP = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
DATA = {
    "sft": {"name": "oasst", "adapter": "oasst", "path": "data/sft/oasst-en100/en_100_tree.jsonl"},
    "dpo": {
        "name": "orca_dpo",
        "adapter": "openai_preference",
        "path": "data/dpo/orca-dpo-pairs-validation/validation.jsonl",
    },
}


def cfg(kind: str, **overrides) -> DataConfig:
    base = {
        **DATA[kind],
        "path": str(ROOT / DATA[kind]["path"]),
        "max_samples": 40,
        "eval_fraction": 0.25,
        "max_length": 8192,
    }  # nothing dropped or cut: one row per example
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


def row_keys(rows, kind: str) -> list[tuple]:
    """One hashable key per row: its tokens (a pair: prompt + chosen + rejected)."""
    if kind == "sft":
        return [tuple(ids) for ids in rows["input_ids"]]
    return [
        tuple(p) + (-1,) + tuple(c) + (-1,) + tuple(r)
        for p, c, r in zip(rows["llama_prompt_ids"], rows["llama_chosen_ids"], rows["llama_rejected_ids"])
    ]


def example_keys(exs: list[dict], dcfg, kind: str) -> list[tuple]:
    if kind == "sft":
        return [tuple(ids) for ex in exs for ids, _ in sft.encode(ex, SP, dcfg, Stats())]
    return [tuple(p) + (-1,) + tuple(c) + (-1,) + tuple(r) for p, c, r in (pairs.encode_pair(SP, ex) for ex in exs)]


@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.parametrize("cache", [True, False])
def test_no_example_is_in_both_splits_and_the_held_out_ones_are_the_eval_rows(kind, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    dcfg = cfg(kind, cache=cache)
    prepared = data_load.load(dcfg, types.SimpleNamespace(sp=SP), kind)
    train, held_out = row_keys(prepared.train, kind), row_keys(prepared.eval, kind)
    assert (len(train), len(held_out)) == (30, 10)
    assert len(set(train)) == 30 and len(set(held_out)) == 10  # the 40 examples are distinct
    assert not set(train) & set(held_out), "eval rows that training also trains on"
    used = example_keys(examples.examples(dcfg), dcfg, kind)
    assert sorted(train + held_out) == sorted(used)  # every example used is in exactly one split
    train_ex, eval_ex = examples.splits(dcfg)  # what samples.jsonl, export verification and evaluate.py hold out
    assert sorted(example_keys(eval_ex, dcfg, kind)) == sorted(held_out)
    assert sorted(example_keys(train_ex, dcfg, kind)) == sorted(train)
    assert prepared.stats.eval_examples == 10 and prepared.stats.examples == 40
    # data.cache=false (README: "turns it off"): tokenized in memory, nothing kept under $FINETUNE_CACHE/data
    assert prepared.stats.cache == ("miss" if cache else "off")
    kept = [p for p in (tmp_path / "data").iterdir() if p.is_dir()]
    assert len(kept) == (1 if cache else 0)


def test_no_conversation_text_is_in_both_splits_of_the_bundled_data():
    """All 100 OpenAssistant conversations, 10% held out: no first question appears on both sides."""
    dcfg = cfg("sft", max_samples=None, eval_fraction=0.1)
    train, held_out = examples.splits(dcfg)
    first = lambda exs: {ex["messages"][0]["content"] for ex in exs}  # noqa: E731
    assert (len(train), len(held_out)) == (90, 10)
    assert not first(train) & first(held_out)
