"""Each adapter on its real bundled file with exact counts, and on small records of every supported schema."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from finetune.config import DataConfig
from finetune.data import adapters, examples
from finetune.data.adapters import Invalid, MissingField
from finetune.data.stats import DataError, Stats


def data_cfg(name: str, **overrides) -> DataConfig:
    """configs/data/<name>.yaml over the schema, as Hydra composes it."""
    yaml = OmegaConf.load(ROOT / "configs" / "data" / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), yaml, overrides)
    merged.path = str(ROOT / merged.path)
    return OmegaConf.to_object(merged)


@pytest.mark.parametrize(
    "name, n, records, kind",
    [
        ("oasst", 100, 100, "messages"),
        ("oasst_pairs", 429, 100, "prompt"),
        ("orca_dpo", 284, 284, "prompt"),
        ("self_instruct", 175, 175, "messages"),
    ],
)
def test_bundled_files_give_exact_counts(name, n, records, kind):
    stats = Stats()
    exs = examples.examples(data_cfg(name), stats)
    assert (len(exs), stats.records, stats.skipped) == (n, records, {})
    assert all(kind in ex for ex in exs)


def test_hh_rlhf_2312_records_give_2303_pairs_and_9_counted_skips():
    """5 records whose answers continue different conversations, 4 whose chosen answer is empty (a DPO step
    toward an empty answer teaches the model to stop at once)."""
    stats = Stats()
    exs = examples.examples(data_cfg("hh_rlhf"), stats)
    assert stats.records == 2312 and len(exs) == 2303
    reasons = {k.split(" (")[0]: v for k, v in stats.skipped.items()}
    assert reasons == {"chosen and rejected continue different conversations": 5, "the chosen answer is empty": 4}, (
        stats.skipped
    )
    assert all(ex["prompt"][-1]["role"] == "user" and isinstance(ex["chosen"], str) for ex in exs)
    with pytest.raises(DataError, match=r"test\.jsonl\.gz:87: the chosen answer is empty"):
        examples.examples(data_cfg("hh_rlhf", invalid="error"))


def test_oasst_follows_the_best_ranked_reply_and_pairs_rank_0_against_the_rest():
    tree = {
        "prompt": {
            "role": "prompter",
            "text": "Q",
            "replies": [
                {"role": "assistant", "text": "second", "rank": 1, "replies": []},
                {
                    "role": "assistant",
                    "text": "best",
                    "rank": 0,
                    "replies": [{"role": "prompter", "text": "follow-up", "replies": []}],
                },  # unanswered: dropped from the SFT chat
                {"role": "assistant", "text": "third", "rank": 2, "replies": []},
                {"role": "assistant", "text": "unranked", "replies": []},
            ],
        }
    }
    assert list(adapters.oasst(tree, {})) == [
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "best"}]}
    ]
    pairs = list(adapters.oasst_pairs(tree, {}))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "second"), ("best", "third")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Q"}]


def test_oasst_conversations_are_multi_turn_and_end_with_an_answer():
    exs = examples.examples(data_cfg("oasst"))
    lengths = [len(ex["messages"]) for ex in exs]
    assert sorted(set(lengths)) == [2, 4] and lengths.count(4) == 42  # 42 two-turn conversations
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in exs)


def test_alpaca_puts_the_input_after_the_instruction():
    with_input = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}
    assert next(adapters.alpaca(with_input, {}))["messages"] == [
        {"role": "user", "content": "Translate.\n\nBonjour"},
        {"role": "assistant", "content": "Hello"},
    ]
    no_input = {"instruction": "Say hi.", "input": "", "output": "Hi"}
    assert next(adapters.alpaca(no_input, {}))["messages"][0]["content"] == "Say hi."


def test_self_instruct_yields_one_conversation_per_instance():
    task = {"instruction": "Add.", "instances": [{"input": "1+1", "output": "2"}, {"input": "", "output": "0"}]}
    assert [ex["messages"][0]["content"] for ex in adapters.self_instruct(task, {})] == ["Add.\n\n1+1", "Add."]


def test_sharegpt_and_openai_messages_map_roles_and_content_parts():
    share = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    assert [m["role"] for m in next(adapters.sharegpt(share, {}))["messages"]] == ["system", "user", "assistant"]
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "!"}]},
            {"role": "assistant", "content": "A"},
        ]
    }
    assert next(adapters.messages(parts, {}))["messages"][0] == {"role": "user", "content": "Q!"}
    with pytest.raises(Invalid, match="message role 'tool' is not one of"):
        next(adapters.messages({"messages": [{"role": "tool", "content": "x"}]}, {}))


def test_hh_transcript_splits_at_the_last_assistant_turn():
    rec = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:  Knock knock.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No.",
    }
    assert next(adapters.hh_rlhf(rec, {})) == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Joke?"},
        ],
        "chosen": "Knock knock.",
        "rejected": "No.",
    }


def test_field_mapping_reads_any_schema_including_nested_fields():
    rec = {"q": "Why?", "ctx": {"text": "Because."}, "meta": {"answers": ["42"]}, "persona": "Be brief."}
    fields = {"prompt": "q", "input": "ctx.text", "response": "meta.answers.0", "system": "persona"}
    assert next(adapters.mapped(rec, fields))["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?\n\nBecause."},
        {"role": "assistant", "content": "42"},
    ]
    fields = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    pair = next(adapters.mapped({"p": "Q", "good": "A", "bad": "B"}, fields))
    assert pair == {"prompt": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}


def test_a_missing_field_names_the_field_the_record_keys_and_the_mapping_to_use():
    with pytest.raises(MissingField) as err:
        next(adapters.mapped({"question": "Q", "answer": "A"}, {}))
    assert str(err.value) == (
        "missing field 'prompt' (the record has ['answer', 'question']); if your data names "
        "it differently, map it with data.fields.prompt=<your field>, or pick another "
        "data.adapter"
    )


def test_raw_text_adapter():
    assert list(adapters.text({"body": "Once upon a time."}, {"text": "body"})) == [{"text": "Once upon a time."}]
