"""preview.py as a user runs it, the preflight stopping train.py before any weight loads, and a schema the project
has never seen training through field mapping alone. (Bad-input messages: tests/unit/test_data.py.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST, compose, run_entry
from tests.unit.test_adapters import data_cfg
from tests.unit.test_chat_format import SP
from finetune import config
from finetune.data import examples
from finetune.data import load as data_load
from finetune.model import tokenizer as tokenizer_mod

LORA = ["recipe=tiny_lora"]  # 16-bit: preview and the failing runs never load weights, so skip bitsandbytes


def meta_ids_and_labels(conv: list[dict]) -> tuple[list[int], list[int]]:
    """Meta's per-turn rule with SentencePiece: each turn BOS [INST] user [/INST] answer ▁ EOS; labels -100 up to
    and including [/INST]."""
    ids, labels = [], []
    for user, answer in zip(conv[::2], conv[1::2]):
        prompt = [1] + SP.encode(f"[INST] {user['content'].strip()} [/INST]")
        full = [1] + SP.encode(f"[INST] {user['content'].strip()} [/INST] {answer['content'].strip()} ") + [2]
        assert full[: len(prompt)] == prompt
        ids += full
        labels += [-100] * len(prompt) + full[len(prompt) :]
    return ids, labels


def test_preview_json_gives_meta_exact_ids_and_labels():
    out = run_entry("preview.py", *LORA, "n=6", "format=json", "data.max_length=4096")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    reference = {}
    for ex in examples.examples(data_cfg("oasst")):
        ids, labels = meta_ids_and_labels(ex["messages"])
        reference[tuple(ids)] = labels
    for row in rows:
        assert tuple(row["input_ids"]) in reference, "ids differ from Meta's encoding of every bundled conversation"
        assert row["labels"] == reference[tuple(row["input_ids"])]
        assert row["trained"] == sum(label != -100 for label in row["labels"])
    assert "preflight: PASS" in out.stderr and "tokens per example" in out.stderr


def test_preview_text_highlights_trained_tokens_and_prints_the_verdict():
    out = run_entry("preview.py", *LORA, "n=2", "data=self_instruct")
    text = out.stdout
    assert text.count("── example ") == 2 and "<s>[INST] " in text and " [/INST]⟦ " in text and " </s>⟧" in text
    assert "data: self_instruct: " in text and "documents chunked; tokens per example: min" in text
    assert "preflight: PASS" in text and "  ok    pad id 0 != EOS id 2" in text


def test_train_stops_on_a_failed_preflight_before_loading_weights(tmp_path):
    out = run_entry(
        "train.py", *LORA, f"output_dir={tmp_path / 'run'}", "data.max_length=24", "data.too_long=truncate", check=False
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: the data preflight failed, training would not work:" in out.stderr
    assert "FAIL  EOS is in no example's labels" in out.stderr
    assert "Loading weights" not in out.stderr and not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow
def test_a_never_seen_schema_trains_through_field_mapping_alone(tmp_path):
    src = tmp_path / "faq.jsonl"
    with src.open("w") as f:  # the Self-Instruct tasks rewritten into a schema of our own invention
        for ex in examples.examples(data_cfg("self_instruct"))[:40]:
            user, answer = ex["messages"][0]["content"], ex["messages"][1]["content"]
            f.write(json.dumps({"ticket": {"question": user}, "resolution": [{"text": answer}]}) + "\n")
    run = tmp_path / "run"
    out = run_entry(
        "train.py",
        *LORA,
        f"output_dir={run}",
        *FAST,
        "data=jsonl",
        f"data.path={src}",
        "data.fields.prompt=ticket.question",
        "data.fields.response=resolution.0.text",
        "trainer.max_steps=2",
        "data.eval_fraction=0",
    )  # after FAST: fewer steps, no eval
    assert "data: jsonl: " in out.stdout and "preflight: PASS" in out.stdout
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    losses = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(loss is not None for loss in losses) >= 2


def test_preview_shows_each_preference_pair_as_its_two_sequences():
    from finetune import preview
    from finetune.data import load as data_load

    dcfg = data_cfg("orca_dpo", max_length=4096, max_prompt_length=None, eval_fraction=0.0)
    prepared = data_load.load(dcfg, tokenizer_mod.load_tokenizer(config.load(compose("recipe=tiny_dpo")).model), "dpo")
    rows = [seq for k, row in enumerate(prepared.train.to_list()) for seq in preview.sequences(k, row)]
    assert len(rows) == 2 * 284 and prepared.stats.records == 284 and prepared.stats.dropped_too_long == 0
    for k in (0, 2, 100):
        (what, chosen, c_mask), (_, rejected, _) = rows[k], rows[k + 1]
        assert what == f"pair {k // 2} (chosen)" and rows[k + 1][0] == f"pair {k // 2} (rejected)"
        start = c_mask.index(1)
        assert chosen[:start] == rejected[:start], "both sides share the prompt tokens"
        assert chosen[-2:] == rejected[-2:] == [29871, 2]
        assert chosen[start:] != rejected[start:]


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_preview_shows_what_the_methods_trainer_reads(kind):
    """preview.py's sequences are the rows `data.load(..., kind)` gives the trainer: the method's own encoder (KTO:
    each answer alone, marked good or bad), `data.max_prompt_length` applied, the method's preflight."""
    over = [f"recipe=tiny_{kind}", "data.max_samples=40", "data.max_prompt_length=128"]
    out = run_entry("preview.py", *over, "n=6", "format=json")
    shown = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    cfg = config.load(compose(*over))
    train = data_load.load(cfg.data, tokenizer_mod.load_tokenizer(cfg.model), kind).train.select(range(6))
    answers = ("llama_chosen_ids", "llama_rejected_ids") if kind == "dpo" else ("llama_completion_ids",)
    expected = [(row["llama_prompt_ids"], row[a]) for row in train for a in answers]
    assert [r["input_ids"] for r in shown] == [p + a for p, a in expected]
    assert [r["labels"] for r in shown] == [[-100] * len(p) + a for p, a in expected]
    assert max(r["labels"].count(-100) for r in shown) <= 128  # the prompt limit training applies
    assert "skipped: prompt longer than data.max_prompt_length" in out.stderr
    assert "ok    every prompt starts with one BOS id" in out.stderr  # the preference preflight
    if kind == "kto":
        text = run_entry("preview.py", *over, "n=6").stdout
        assert text.count("── example ") == 6 and "(good): " in text and "(bad): " in text
