"""DPO data and checks without training: Meta-exact pairs, the collator TRL sees, and bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import compose
from finetune import config
from finetune.data import chat_format, examples, pairs
from finetune.data import load as data_load
from finetune.data.stats import DataError, Stats
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.training import checks, dpo


@pytest.fixture(scope="module")
def cfg():
    return config.load(compose("recipe=tiny_dpo"))


@pytest.fixture
def dcfg(cfg):
    """A copy of the tiny_dpo data config, for tests that change it."""
    return copy.deepcopy(cfg.data)


@pytest.fixture(scope="module")
def tok(cfg):
    return tokenizer_mod.load_tokenizer(cfg.model)


def pair_file(tmp_path, pairs) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": p}]},
                    "preferred_output": [{"role": "assistant", "content": c}],
                    "non_preferred_output": [{"role": "assistant", "content": r}],
                }
            )
            + "\n"
            for p, c, r in pairs
        )
    )
    return str(path)


def test_every_bundled_orca_pair_is_meta_exact(cfg, tok):
    """prompt + answer is token for token Meta's encoding of the dialog ending with that answer, EOS included."""

    exs = examples.examples(cfg.data)
    assert len(exs) == 284
    for ex in exs:
        prompt, chosen, rejected = pairs.encode_pair(tok.sp, ex)
        for answer, ids in ((ex["chosen"], chosen), (ex["rejected"], rejected)):
            want, _ = chat_format.encode_dialog(tok.sp, [*ex["prompt"], {"role": "assistant", "content": answer}])
            assert prompt + ids == want
            assert ids[-1] == chat_format.EOS_ID and len(ids) > 1
        assert prompt[0] == chat_format.BOS_ID and prompt.count(chat_format.BOS_ID) == 1
        assert prompt == chat_format.encode_prompt(tok.sp, ex["prompt"])[: len(prompt)]


def test_collate_feeds_our_ids_to_trls_collator(tok):
    rows = [
        {
            "llama_prompt_ids": [1, 5, 6],
            "llama_chosen_ids": [7, 2],
            "llama_rejected_ids": [8, 9, 2],
            "ref_chosen_logps": -1.5,
            "ref_rejected_logps": -2.5,
            "prompt_ids": [1],
            "chosen_ids": [2],
        },
        {
            "llama_prompt_ids": [1, 5],
            "llama_chosen_ids": [3, 2],
            "llama_rejected_ids": [2],
            "ref_chosen_logps": -0.5,
            "ref_rejected_logps": -3.0,
            "prompt_ids": [1],
            "chosen_ids": [2],
        },
    ]
    batch = dpo.collate(tok.pad_id)(rows)
    assert batch["input_ids"].tolist() == [
        [1, 5, 6, 7, 2, 0],
        [1, 5, 3, 2, 0, 0],
        [1, 5, 6, 8, 9, 2],
        [1, 5, 2, 0, 0, 0],
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 0, 0, 0],
    ]
    assert batch["ref_chosen_logps"].tolist() == [-1.5, -0.5]
    assert torch.equal(batch["attention_mask"], (batch["input_ids"] != 0).long())


def test_too_long_pairs_are_dropped_or_cut_and_counted(dcfg, tok, tmp_path):
    long = "word " * 200
    dcfg.path, dcfg.max_length, dcfg.max_prompt_length = pair_file(tmp_path, [("hi", long, "no")]), 64, None
    exs = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": long, "rejected": "no"}]
    dcfg.too_long = "drop"
    stats = Stats()
    assert pairs.tokenize(exs, tok.sp, dcfg, stats)["llama_prompt_ids"] == [] and stats.dropped_too_long == 1
    dcfg.too_long = "truncate"
    stats = Stats()
    cols = pairs.tokenize(exs, tok.sp, dcfg, stats)
    assert len(cols["llama_prompt_ids"][0]) + len(cols["llama_chosen_ids"][0]) == 64 and stats.cut == 1
    assert cols["llama_rejected_ids"][0][-1] == chat_format.EOS_ID  # the short answer keeps its EOS
    dcfg.max_prompt_length = 4
    stats = Stats()
    assert pairs.tokenize(exs, tok.sp, dcfg, stats)["llama_prompt_ids"] == []
    assert stats.skipped == {"prompt longer than data.max_prompt_length": 1}


def test_conversations_are_refused_for_dpo(tok):
    cfg = config.load(compose("recipe=tiny_dpo", "data=oasst"))
    with pytest.raises(
        DataError,
        match=r"data=oasst .*not preference pairs \(prompt/chosen/rejected\).*"
        r"use a preference data config \(data=orca_dpo\) or train with trainer=sft",
    ):
        data_load.load(cfg.data, tok, "dpo")


def test_identical_chosen_and_rejected_names_the_line(dcfg, tok, tmp_path):
    dcfg.path, dcfg.eval_fraction = (
        pair_file(tmp_path, [("b?", "Yes", "No"), ("a?", "Same.", "Same. "), ("c?", "x", "x")]),
        0.0,
    )
    with pytest.raises(
        DataError,
        match=rf"^{dcfg.path}:2: chosen and rejected are identical \(such a pair "
        r"teaches nothing: its DPO loss stays ln 2\); fix the record, or set "
        r"data.invalid=skip",
    ):
        data_load.load(dcfg, tok, "dpo")
    dcfg.invalid = "skip"
    p = data_load.load(dcfg, tok, "dpo")
    train, stats = p.train, p.stats
    assert len(train) == 1 and sum(stats.skipped.values()) == 2


def test_dpo_config_errors_name_the_key_and_the_fix():
    problems = checks.problems(
        compose("recipe=tiny_dpo", "trainer.loss_type=dpo", "trainer.beta=0", "data.max_prompt_length=600")
    )
    assert f"trainer.loss_type=dpo: use one of {', '.join(dpo.loss_types())}" in problems
    assert any(p.startswith("trainer.beta=0.0: must be > 0") for p in problems)
    assert any(p.startswith("data.max_prompt_length=600 leaves no room") for p in problems)
    assert checks.problems(compose("recipe=tiny_dpo", "trainer.loss_type=ipo")) == []


def fake_adapter(folder, base: str, shapes: dict[str, tuple]) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(folder / "adapter_model.safetensors"))
    return str(folder)


def test_init_adapter_from_another_base_is_refused_before_loading(tmp_path):
    key = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
    other = fake_adapter(tmp_path / "13b", "meta-llama/Llama-2-13b-hf", {key.format(0, "A"): (8, 5120)})
    problems = checks.problems(compose("recipe=tiny_dpo", f"init_adapter={other}"))
    here = config.load(compose("recipe=tiny_dpo")).model.path  # ${FINETUNE_CACHE}/models/llama2-tiny
    assert problems == [
        f"init_adapter={other} was trained on meta-llama/Llama-2-13b-hf, not on model.path="
        f"{here}; train the SFT adapter on this model, or pick the "
        "model it was trained on (model=... or model.path=...)"
    ]
    tiny = config.load(compose("recipe=tiny_dpo")).model
    fake_adapter(tmp_path / "wide", "/somewhere/llama2-tiny", {key.format(0, "A"): (8, 128)})
    assert (
        "q_proj.lora_A.weight has shape [8, 128], which does not fit model=llama2_tiny (hidden 64, 2 layers)"
        in lora.adapter_base_problems(tmp_path / "wide", tiny)[0]
    )
    fake_adapter(tmp_path / "deep", "/somewhere/llama2-tiny", {key.format(5, "B"): (64, 8)})
    assert "layers.5" in lora.adapter_base_problems(tmp_path / "deep", tiny)[0]
    fake_adapter(
        tmp_path / "fits", "/somewhere/llama2-tiny", {key.format(1, "A"): (8, 64), key.format(1, "B"): (64, 8)}
    )
    assert lora.adapter_base_problems(tmp_path / "fits", tiny) == []
    missing = checks.problems(compose("recipe=tiny_dpo", f"init_adapter={tmp_path / 'nope'}"))
    assert missing == [
        f"init_adapter={tmp_path / 'nope'}: no adapter_config.json there; point it at a run's adapter/ folder"
    ]
