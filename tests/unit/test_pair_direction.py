"""Preference pairs mean what the source data means: the answer the data prefers is `chosen` for every bundled
pair format, and a multi-turn prompt stays in the prompt (each completion is one answer, never earlier turns).

Both bugs pass every check that compares our tokens with our own examples (a swapped pair is still Meta-exact, a
prompt cut after the first turn is still a prefix), so these tests read the source files themselves.
"""

from __future__ import annotations

import gzip
import json

import pytest

from tests.conftest import ROOT, compose
from finetune import config
from finetune.data import chat_format, examples, pairs
from finetune.data import load as data_load
from finetune.model import tokenizer as tokenizer_mod

E_INST_IDS = [518, 29914, 25580, 29962]  # "▁[/INST]": every prompt ends by handing the turn to the assistant


@pytest.fixture(scope="module")
def tok():
    return tokenizer_mod.load_tokenizer(config.load(compose("recipe=tiny_dpo")).model)


def data_cfg(name: str, **overrides):
    cfg = config.load(compose("recipe=tiny_dpo", f"data={name}"))
    for key, value in overrides.items():
        setattr(cfg.data, key, value)
    return cfg.data


def raw_records(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(ROOT / path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_orca_preferred_output_is_chosen():
    dcfg = data_cfg("orca_dpo")
    records = raw_records(dcfg.path)
    preferred = {r["preferred_output"][-1]["content"] for r in records}
    other = {r["non_preferred_output"][-1]["content"] for r in records}
    exs = examples.examples(dcfg)
    assert len(exs) == len(records) == 284
    assert all(ex["chosen"] in preferred and ex["rejected"] in other for ex in exs)
    assert sum(ex["chosen"] in other for ex in exs) == 0  # the two sets do not overlap: a swap could not pass


def test_hh_rlhf_chosen_transcript_gives_chosen():
    dcfg = data_cfg("hh_rlhf")
    records = raw_records(dcfg.path)
    chosen = {r["chosen"].rsplit("\n\nAssistant:", 1)[-1].strip() for r in records}
    rejected = {r["rejected"].rsplit("\n\nAssistant:", 1)[-1].strip() for r in records}
    exs = examples.examples(dcfg)
    assert len(exs) > 2000
    assert all(ex["chosen"] in chosen and ex["rejected"] in rejected for ex in exs)
    assert sum(ex["chosen"] not in rejected for ex in exs) > 0.9 * len(exs)  # mostly distinct texts


def test_oasst_pairs_prefer_the_better_ranked_reply():
    """OpenAssistant ranks sibling replies (0 = best): chosen must rank better than rejected, under the same prompt."""
    dcfg = data_cfg("oasst_pairs")
    rank: dict[tuple[str, str], int] = {}

    def walk(node):
        for reply in node.get("replies") or []:
            if reply.get("rank") is not None and not reply.get("deleted"):
                rank[(node["text"], reply["text"])] = reply["rank"]
            walk(reply)

    for tree in raw_records(dcfg.path):
        walk(tree["prompt"])
    exs = examples.examples(dcfg)
    assert len(exs) == 429
    for ex in exs:
        asked = ex["prompt"][-1]["content"]
        assert rank[(asked, ex["chosen"])] < rank[(asked, ex["rejected"])], ex["prompt"][-1]["content"][:80]


@pytest.mark.parametrize("name", ["hh_rlhf", "oasst_pairs"])
def test_multi_turn_prompts_stay_in_the_prompt(name, tok, tmp_path, monkeypatch):
    """Every earlier turn is in the prompt TRL conditions on; a completion is one answer and its EOS. Checked on the
    rows training reads (through the cache) and on each pair encoded on its own against Meta's prompt encoding."""
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    dcfg = data_cfg(name, max_samples=200, max_length=4096, max_prompt_length=None, eval_fraction=0.0)
    rows = data_load.load(dcfg, tok, "dpo").train
    multi = 0
    for prompt, chosen, rejected in zip(rows["llama_prompt_ids"], rows["llama_chosen_ids"], rows["llama_rejected_ids"]):
        assert prompt[-4:] == E_INST_IDS and prompt[0] == chat_format.BOS_ID
        for answer in (chosen, rejected):
            assert chat_format.BOS_ID not in answer and answer[-1] == chat_format.EOS_ID  # one answer, no new turn
            assert answer.count(chat_format.EOS_ID) == 1
        multi += prompt.count(chat_format.BOS_ID) > 1
    assert multi > 50, f"only {multi} of {len(rows)} pairs have earlier turns"

    exs = examples.examples(dcfg)
    for ex in exs:
        prompt, chosen, rejected = pairs.encode_pair(tok.sp, ex)
        assert prompt == chat_format.encode_prompt(tok.sp, ex["prompt"])  # exactly what chat.py sends
        assert len(prompt) > 0 and prompt.count(chat_format.BOS_ID) == sum(m["role"] == "user" for m in ex["prompt"])
