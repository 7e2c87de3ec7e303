"""Data at scale (issue 16): the streaming, multi-process tokenizer gives exactly the in-memory path's ids, labels,
split and counts; bad records deep in a big file are named by line or counted; an interrupted build leaves no half
cache. Big files here are a few thousand small records (prepare.py and the cache hit: tests/integration)."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
import types

import pytest
import sentencepiece as spm
from omegaconf import OmegaConf

from tests.conftest import ROOT
from finetune.config import DataConfig
from finetune.data import examples
from finetune.data import load as data_load
from finetune.data.build import ENCODERS
from finetune.data.stats import DataError, Stats

SP = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
TOK = types.SimpleNamespace(sp=SP)  # data_load.load needs only the SentencePiece processor
WORDS = "the a model answer question token data cat sat on mat why how when blue green fast slow".split()


def cfg(path, **overrides) -> DataConfig:
    base = {"name": "scale", "adapter": "messages", "path": str(path), "max_length": 96}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


def bundled(name: str, **overrides) -> DataConfig:
    yaml = OmegaConf.load(ROOT / "configs" / "data" / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), yaml, overrides)
    merged.path = str(ROOT / merged.path)
    return OmegaConf.to_object(merged)


def in_memory(dcfg, kind: str):
    """The small-data path this issue replaced (load.tokenized): every example in a list, shuffled, split, encoded."""
    stats, encoder = Stats(), ENCODERS[kind]
    exs = examples.examples(dcfg, stats)
    train, held_out = (
        (exs, examples.examples(dcfg, stats, path=dcfg.eval_path))
        if dcfg.eval_path
        else examples.split(exs, dcfg.eval_fraction)
    )
    encoder.check_examples(train + held_out, dcfg)
    train_cols = encoder.tokenize(train, SP, dcfg, stats)
    n_train = stats.examples
    eval_cols = encoder.tokenize(held_out, SP, dcfg, stats)
    stats.eval_examples = stats.examples - n_train
    return train_cols, eval_cols, stats, exs[:64], (held_out + train)[:256]


def conversations(n: int, seed: int = 0, bad: dict | None = None) -> list[str]:
    """n JSON lines of small chats (some with a system prompt, some two turns, some too long for max_length=96);
    `bad`: line number -> the raw line to put there instead."""
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, k)))

    lines = []
    for i in range(1, n + 1):
        msgs = [{"role": "system", "content": text(6)}] if i % 7 == 0 else []
        for _ in range(1 + (i % 3 == 0)):
            msgs += [{"role": "user", "content": text(8)}, {"role": "assistant", "content": text(30 if i % 11 else 90)}]
        lines.append((bad or {}).get(i) or json.dumps({"messages": msgs}))
    return lines


def write(path, lines: list[str]):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))  # a cache of this test's own
    return tmp_path / "cache" / "data"


def assert_same(prepared, reference, kind: str):
    train_cols, eval_cols, stats, sample, head = reference
    cols = (
        ("input_ids", "assistant_masks")
        if kind == "sft"
        else ("llama_prompt_ids", "llama_chosen_ids", "llama_rejected_ids")
    )
    assert set(cols) <= set(prepared.train.column_names), prepared.train.column_names  # the columns TRL reads
    assert prepared.train.to_dict() == {k: train_cols[k] for k in prepared.train.column_names}
    assert (prepared.eval.to_dict() if prepared.eval is not None else None) == (
        {k: eval_cols[k] for k in prepared.eval.column_names} if stats.eval_examples else None
    )
    streamed = {k: v for k, v in vars(prepared.stats).items() if k not in ("cache", "cache_dir")}
    assert streamed == {k: v for k, v in vars(stats).items() if k not in ("cache", "cache_dir")}
    assert (prepared.sample, prepared.head) == (sample, head)


CASES = [  # (data, kind, overrides): every split rule, caps, length rules, pairs
    ("oasst", "sft", {"eval_fraction": 0.1, "max_length": 512, "seed": 3}),
    ("oasst", "sft", {"eval_fraction": 0.25, "max_samples": 40, "max_length": 256, "too_long": "truncate"}),
    ("oasst", "sft", {"eval_path": str(ROOT / "data/sft/oasst-en100/en_100_tree.jsonl"), "max_samples": 30}),
    (
        "oasst",
        "sft",
        {
            "adapter": "text",
            "fields": {"text": "prompt.text"},
            "max_length": 32,
            "too_long": "truncate",
            "eval_fraction": 0.2,
        },
    ),
    ("self_instruct", "sft", {"eval_fraction": 0.05, "train_on": "last", "system_prompt": "Be brief."}),
    ("orca_dpo", "dpo", {"eval_fraction": 0.1, "max_length": 512, "max_prompt_length": 256}),
    ("oasst_pairs", "dpo", {"eval_fraction": 0.1, "max_length": 384, "too_long": "truncate"}),
]


@pytest.mark.parametrize("name, kind, overrides", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_streaming_gives_the_in_memory_ids_labels_split_and_counts_on_bundled_data(name, kind, overrides):
    dcfg = bundled(name, **overrides)
    assert_same(data_load.load(dcfg, TOK, kind), in_memory(dcfg, kind), kind)


def test_hh_rlhf_on_two_processes_gives_the_in_memory_pairs_and_counted_skips(cache):
    dcfg = bundled("hh_rlhf", eval_fraction=0.02, invalid="skip", max_length=512, num_proc=2)
    prepared = data_load.load(dcfg, TOK, "dpo")
    assert_same(prepared, in_memory(dcfg, "dpo"), "dpo")
    assert sum(prepared.stats.skipped.values()) == 9  # 2312 records, 2303 pairs (test_adapters)
    assert len(list(cache.glob("hh_rlhf-*/rows/train/*.arrow"))) == 2  # each process wrote its share


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_few_thousand_conversations_on_two_processes_equal_the_in_memory_path(tmp_path, cache, suffix):
    path = write(tmp_path / f"chats{suffix}", conversations(3500))
    dcfg = cfg(path, eval_fraction=0.1, num_proc=2, max_samples=3000, seed=5)
    prepared = data_load.load(dcfg, TOK)
    assert_same(prepared, in_memory(dcfg, "sft"), "sft")
    assert prepared.stats.dropped_too_long > 0 and prepared.stats.cache == "miss"
    assert len(list(cache.glob("scale-*/rows/train/*.arrow"))) == 2
    again = data_load.load(cfg(path, eval_fraction=0.1, num_proc=1, max_samples=3000, seed=5), TOK)
    assert again.stats.cache == "hit", "data.num_proc changes no token, so it is not in the cache key"


def test_a_folder_of_files_is_shared_across_file_boundaries(tmp_path, cache):
    lines = conversations(4500)
    (tmp_path / "chats").mkdir()
    for i, part in enumerate((lines[:1700], lines[1700:2100], lines[2100:])):  # shares start inside later files
        write(tmp_path / "chats" / f"part-{i}.jsonl{'.gz' if i == 1 else ''}", part)
    dcfg = cfg(tmp_path / "chats", eval_fraction=0.05, num_proc=3, seed=1)
    assert_same(data_load.load(dcfg, TOK), in_memory(dcfg, "sft"), "sft")
    assert len(list(cache.glob("scale-*/rows/train/*.arrow"))) == 3


@pytest.mark.parametrize("n, seed, cap", [(0, 0, None), (1, 3, None), (7, 0, 3), (1000, 42, None), (5003, 7, 100)])
def test_the_order_is_the_shuffle_of_the_examples_without_holding_them(n, seed, cap):
    items = [{"i": i} for i in range(n)]
    random.Random(seed).shuffle(items)
    order = examples.order(n, types.SimpleNamespace(seed=seed, max_samples=cap))
    assert order.tolist() == [x["i"] for x in items[:cap]]


def test_a_bad_record_deep_in_a_big_file_is_named_by_line_and_nothing_is_left_behind(tmp_path, cache):
    twice = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"}]})
    path = write(tmp_path / "chats.jsonl.gz", conversations(4000, bad={3517: twice}))
    with pytest.raises(
        DataError,
        match=rf"^{path}:3517: message 1 has role 'user', expected 'assistant' .*"
        "set data.invalid=skip",
    ):
        data_load.load(cfg(path, num_proc=2), TOK)
    broken = write(tmp_path / "broken.jsonl", conversations(4000, bad={2999: '{"messages": [', 3600: "{"}))
    with pytest.raises(DataError, match=rf"^{broken}:2999: malformed JSON \(Expecting value at column 15\)"):
        data_load.load(cfg(broken, num_proc=2), TOK)
    with pytest.raises(DataError, match="every example is longer than data.max_length=8"):
        clean = write(tmp_path / "clean.jsonl", conversations(3000))  # found after tokenizing: rows were written
        data_load.load(cfg(clean, num_proc=2, max_length=8), TOK)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-built stays


def test_skipped_records_deep_in_a_big_file_are_counted_per_reason(tmp_path):
    twice = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"}]})
    empty = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]})
    bad = {3001: twice, 3002: empty, 3999: twice, 1234: empty, 4000: empty}
    dcfg = cfg(write(tmp_path / "chats.jsonl", conversations(4000, bad=bad)), invalid="skip", num_proc=2)
    prepared = data_load.load(dcfg, TOK)
    assert prepared.stats.skipped == {
        "message N (assistant) is empty (an empty answer teaches the model to stop at once)": 3,
        "message N has role 'user', expected 'assistant' (roles must alternate user/assistant, after an optional "
        "system message)": 2,
    }
    assert prepared.stats.records == 4000 and len(prepared.train) == 4000 - 5 - prepared.stats.dropped_too_long
    assert_same(prepared, in_memory(dcfg, "sft"), "sft")


KILLED = """
import sys, types
sys.path.insert(0, sys.argv[1])
import sentencepiece as spm
from finetune.config import DataConfig
from finetune.data import load as data_load
dcfg = DataConfig(name="scale", adapter="messages", path=sys.argv[2], max_length=96, num_proc=2)
data_load.load(dcfg, types.SimpleNamespace(sp=spm.SentencePieceProcessor(model_file=sys.argv[3])))
"""


def test_a_build_killed_while_tokenizing_leaves_no_half_cache_and_the_next_run_redoes_it(tmp_path, cache):
    path = write(tmp_path / "chats.jsonl", conversations(10000))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(ROOT), str(path), str(ROOT / "data/llama2-tokenizer/tokenizer.model")],
        start_new_session=True,
        env={**os.environ, "FINETUNE_CACHE": str(cache.parent)},
    )
    deadline = time.time() + 120
    while not list(cache.glob("scale-*.tmp-*/rows/train.scratch/side/*.json")):  # a share done, others going
        assert proc.poll() is None and time.time() < deadline, "the build ended before it could be interrupted"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the process and its tokenizing workers, as a node failure would
    proc.wait()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock") and ".tmp-" not in p.name] == []
    dcfg = cfg(path, num_proc=2)
    prepared = data_load.load(dcfg, TOK)
    assert prepared.stats.cache == "miss" and [p.name for p in cache.iterdir() if ".tmp-" in p.name] == []
    assert_same(prepared, in_memory(dcfg, "sft"), "sft")
    assert data_load.load(dcfg, TOK).stats.cache == "hit"
