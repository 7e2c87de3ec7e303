"""Sources, bad input (one clear error naming the file, line and fix), splits, length limits."""

from __future__ import annotations

import gzip
import json

import pytest
import sentencepiece as spm
from omegaconf import OmegaConf

from tests.conftest import ROOT
from finetune.config import DataConfig
from finetune.data import examples, sft
from finetune.data.stats import DataError, Stats
from finetune.training import checks

SP = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
ROWS = [{"instruction": f"Task {i}", "input": "" if i % 2 else f"x={i}", "output": f"Answer {i}"} for i in range(6)]


def cfg(path, **overrides) -> DataConfig:
    base = {"name": "t", "adapter": "alpaca", "path": str(path)}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


def write_jsonl(path, rows, raw_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return path


# ------------------------------------------------------------------------------------------ sources
def test_every_local_format_gives_the_same_examples(tmp_path):
    import pandas as pd

    (tmp_path / "folder").mkdir()
    paths = [
        write_jsonl(tmp_path / "a.jsonl", ROWS),
        tmp_path / "b.json",
        tmp_path / "c.jsonl.gz",
        tmp_path / "d.parquet",
        tmp_path / "e.csv",
        tmp_path / "folder",
    ]
    paths[1].write_text(json.dumps(ROWS, indent=2))
    paths[2].write_bytes(gzip.compress(paths[0].read_bytes()))
    pd.DataFrame(ROWS).to_parquet(paths[3])  # parquet and csv are read through datasets.load_dataset
    pd.DataFrame(ROWS).to_csv(paths[4], index=False, na_rep="")
    write_jsonl(tmp_path / "folder" / "part-0.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "folder" / "part-1.jsonl", ROWS[3:])
    results = [examples.examples(cfg(p, seed=3)) for p in paths]
    assert len(results[0]) == 6
    for p, r in zip(paths[1:], results[1:]):
        assert r == results[0], p.name


def test_a_hub_id_goes_through_load_dataset_and_fails_clearly_offline():  # conftest: HF_DATASETS_OFFLINE=1
    assert examples.check(cfg("tatsu-lab/alpaca")) == []  # a hub id is not a missing local file
    with pytest.raises(DataError) as err:
        examples.examples(cfg("tatsu-lab/alpaca", split="train", revision="v1"))
    msg = str(err.value)
    assert msg.startswith("hub dataset tatsu-lab/alpaca (split=train, revision=v1): could not be read")
    assert "HF_DATASETS_OFFLINE" in msg and "hf auth login" in msg


# ------------------------------------------------------------------------------------------ bad input
def test_malformed_json_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", ROWS[:2], ['{"instruction": "x", "output": \n'])
    with pytest.raises(DataError, match=rf"^{p}:3: malformed JSON \(Expecting value at column 32\)"):
        examples.examples(cfg(p))


def test_non_utf8_names_file_line_and_byte_offset(tmp_path):
    p = tmp_path / "latin1.jsonl"
    good = (json.dumps(ROWS[0]) + "\n").encode()
    p.write_bytes(good + '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"))
    offset = len(good) + len('{"instruction": "caf')
    with pytest.raises(DataError, match=rf"^{p}:2: not UTF-8 \(byte offset {offset} in the file: b'\\xe9'\)"):
        examples.examples(cfg(p))


def test_missing_field_names_the_record_and_the_field(tmp_path):
    p = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q", "answer": "A"}])
    with pytest.raises(DataError) as err:
        examples.examples(cfg(p))
    assert str(err.value) == (
        f"{p}:1: missing fields 'instruction', 'output' (the record has ['answer', 'question']); "
        "set data.fields.instruction=question data.fields.output=answer, or pick another "
        "data.adapter"
    )


def test_a_wrong_field_mapping_suggests_the_closest_column_not_the_one_that_failed(tmp_path):
    p = write_jsonl(tmp_path / "tickets.jsonl", [{"ticket_question": "Printer jammed?", "staff_reply": "Tray 2."}])
    fields = {"prompt": "question", "response": "answer"}
    with pytest.raises(DataError) as err:
        examples.examples(cfg(p, adapter="fields", fields=fields))
    assert str(err.value) == (
        f"{p}:1: missing fields 'question', 'answer' (the record has ['staff_reply', "
        "'ticket_question']); set data.fields.prompt=ticket_question "
        "data.fields.response=staff_reply, or pick another data.adapter"
    )
    fields["response"] = "staff_reply"  # only the prompt wrong: it alone is named, with the column left for it
    with pytest.raises(DataError, match=r"missing field 'question' .*; set data.fields.prompt=ticket_question, or"):
        examples.examples(cfg(p, adapter="fields", fields=fields))


def test_a_record_that_is_a_json_list_says_what_was_expected(tmp_path):
    p = tmp_path / "lists.jsonl"
    p.write_text('["How do I reset it?", "Hold the button."]\n')
    with pytest.raises(DataError) as err:
        examples.examples(cfg(p, adapter="fields"))
    assert str(err.value) == (
        f"{p}:1: the record is a JSON list, not an object; data.adapter=fields reads one JSON "
        'object per record like {"prompt": ..., "response": ...} (pick the data.adapter that '
        "fits your data)"
    )


def test_evaluate_on_a_preference_run_names_the_users_own_data(tmp_path):
    from finetune.config import FieldsConfig, TrainConfig
    from finetune.data.hints import sft_data_for

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q", "a": "A"}])
    sft_run = tmp_path / "sft"
    sft_run.mkdir()
    sft_data = cfg(
        qa,
        name="jsonl",
        adapter="fields",
        eval_fraction=0.05,
        max_length=1024,
        fields=FieldsConfig(prompt="q", response="a"),
    )
    OmegaConf.save(OmegaConf.structured(TrainConfig(data=sft_data)), sft_run / "config.yaml")
    pairs = cfg(
        qa,
        name="jsonl",
        adapter="fields",
        eval_fraction=0.05,
        max_length=1024,
        fields=FieldsConfig(prompt="q", chosen="good", rejected="bad"),
    )
    dpo = TrainConfig(data=pairs, init_adapter=str(sft_run / "adapter"))
    assert sft_data_for(dpo) == f"data=jsonl data.path={qa} data.fields.prompt=q data.fields.response=a"
    dpo.init_adapter = None  # no SFT run to read: the run's own pairs, scored on their chosen answers
    assert sft_data_for(dpo) == f"data=jsonl data.path={qa} data.fields.prompt=q data.fields.response=good"
    dpo.data = cfg(qa, name="orca_dpo", adapter="openai_preference")
    assert sft_data_for(dpo) == "data=oasst"


def test_a_conversation_out_of_order_is_an_error_or_a_counted_skip(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    twice = {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"}]}
    open_ended = {"messages": [{"role": "user", "content": "Q"}]}
    p = write_jsonl(tmp_path / "chats.jsonl", [ok, twice, ok, open_ended])
    with pytest.raises(
        DataError,
        match=rf"^{p}:2: message 1 has role 'user', expected 'assistant' .*"
        "set data.invalid=skip to skip such records",
    ):
        examples.examples(cfg(p, adapter="messages"))
    stats = Stats()
    assert len(examples.examples(cfg(p, adapter="messages", invalid="skip"), stats)) == 2
    assert sorted(stats.skipped.values()) == [1, 1] and stats.records == 4
    assert any("must end with an assistant answer" in reason for reason in stats.skipped)


def test_empty_dataset_after_filtering_is_an_error(tmp_path):
    p = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "Q"}]}])
    with pytest.raises(DataError, match=r"no examples from 1 records with data.adapter=messages \(1 skipped as"):
        examples.examples(cfg(p, adapter="messages", invalid="skip"))


def test_config_check_lists_adapters_unknown_fields_and_missing_files(tmp_path):
    problems = examples.check(cfg(tmp_path / "nope.jsonl", adapter="alpacca", too_long="cut"))
    assert problems[0].startswith(
        "data.adapter=alpacca: unknown; valid adapters: alpaca, fields, hh_rlhf, "
        "messages, oasst, oasst_pairs, openai_preference, self_instruct, sharegpt, text"
    )
    assert f"data.path={tmp_path / 'nope.jsonl'}: no such file or folder" in problems[1]
    assert "data.too_long=cut: use drop or truncate" in problems


# ------------------------------------------------------------------------------------------ splits
def test_shuffle_is_deterministic_by_seed_and_capped_by_max_samples():
    oasst = ROOT / "data/sft/oasst-en100/en_100_tree.jsonl"
    first = [ex["messages"][0]["content"] for ex in examples.examples(cfg(oasst, adapter="oasst", seed=1))]
    again = [ex["messages"][0]["content"] for ex in examples.examples(cfg(oasst, adapter="oasst", seed=1))]
    other = [ex["messages"][0]["content"] for ex in examples.examples(cfg(oasst, adapter="oasst", seed=2))]
    assert first == again and first != other and sorted(first) == sorted(other)
    assert len(examples.examples(cfg(oasst, adapter="oasst", max_samples=7))) == 7
    train, evals = examples.splits(cfg(oasst, adapter="oasst", eval_fraction=0.1))
    assert (len(train), len(evals)) == (90, 10)


def test_eval_file_is_read_like_the_training_file(tmp_path):
    train_p = write_jsonl(tmp_path / "train.jsonl", ROWS)
    eval_p = write_jsonl(tmp_path / "eval.jsonl", ROWS[:2])
    train, evals = examples.splits(cfg(train_p, eval_path=str(eval_p)))
    assert (len(train), len(evals)) == (6, 2)
    assert "choose one" in " ".join(examples.check(cfg(train_p, eval_path=str(eval_p), eval_fraction=0.1)))


# ------------------------------------------------------------------------------------------ lengths
def turn(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_too_long_conversations_keep_whole_turns_or_cut_the_answer_and_say_so():
    long_answer = "word " * 300
    multi = {"messages": turn("First?", "Short.") + turn("Second?", long_answer)}
    single = {"messages": turn("Only?", long_answer)}
    dcfg = cfg("unused", max_length=64, too_long="truncate")
    stats = Stats()
    ((ids, mask),) = sft.encode(multi, SP, dcfg, stats)
    assert ids[-1] == 2 and mask[-1] == 1 and SP.decode(ids) == "[INST] First? [/INST] Short. "  # first turn kept whole
    ((ids, mask),) = sft.encode(single, SP, dcfg, stats)
    assert len(ids) == 64 and 2 not in ids  # the answer itself was cut: no EOS
    assert (stats.truncated_turns, stats.cut, stats.dropped_too_long) == (1, 1, 0)
    assert sft.encode(single, SP, cfg("unused", max_length=64), stats) == []
    assert stats.dropped_too_long == 1
    assert "1 dropped, 1 cut at a turn boundary, 1 answers cut (EOS lost)" in stats.summary()


def test_long_raw_text_is_split_into_pieces_without_losing_tokens():
    stats = Stats()
    pieces = sft.encode(
        {"text": "token " * 100}, SP, cfg("unused", adapter="text", max_length=32, too_long="truncate"), stats
    )
    flat = [t for ids, _ in pieces for t in ids]
    assert flat == [1] + SP.encode("token " * 100) + [2] and all(len(ids) <= 32 for ids, _ in pieces)
    assert stats.chunked == 1 and pieces[-1][1][-1] == 1


def test_a_misspelled_field_name_fails_in_the_schema():
    from omegaconf.errors import ConfigKeyError

    with pytest.raises(ConfigKeyError, match="Key 'promt' not in 'FieldsConfig'"):
        cfg("x.jsonl", fields={"promt": "question"})


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml")))
def test_every_data_config_composes_and_checks(name):
    from tests.conftest import compose

    problems = checks.problems(compose("recipe=tiny_lora", f"data={name}"))
    bundled = not OmegaConf.is_missing(OmegaConf.load(ROOT / "configs" / "data" / f"{name}.yaml"), "path")
    assert problems == ([] if bundled else ["data.path: required, no value given (set data.path=...)"])
