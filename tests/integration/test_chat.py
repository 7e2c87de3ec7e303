"""finetune/chat.py on the shared tiny QLoRA run: batch answers, the exact training prompt ids, streaming,
multi-turn history, and errors before any weights load."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_entry
from finetune import chat
from finetune.data import chat_format, examples
from finetune.runs import rundir
from finetune.ship import loading


def conversations(run_dir, n: int) -> list[list[dict]]:
    """Multi-turn conversations from the run's own training data."""
    train, _ = examples.splits(rundir.run_config(run_dir).data)
    multi = [ex["messages"] for ex in train if len(ex["messages"]) >= 4]
    assert len(multi) >= n
    return multi[:n]


@pytest.mark.slow
def test_batch_writes_one_answer_per_prompt_with_the_training_prefix_ids(tiny_sft_run, tmp_path):
    convs = conversations(tiny_sft_run, 2)
    convs[1] = [{"role": "system", "content": "Answer  in   one sentence."}, *convs[1]]  # system + space runs
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"messages": c[:-1]} for c in convs] + [{"prompt": "What is the capital of France?"}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "answers.jsonl"

    run_entry(
        "chat.py",
        f"run={tiny_sft_run}",
        f"prompts={prompts}",
        f"out={out}",
        "generate.max_new_tokens=6",
        "batch_size=2",
    )

    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(answers) == 3
    assert [a["messages"] for a in answers] == [
        line.get("messages") or [{"role": "user", "content": line["prompt"]}] for line in lines
    ]
    sp = loading.load_tokenizer(tiny_sft_run, rundir.run_config(tiny_sft_run)).sp
    for conv, answer in zip(convs, answers):
        ids, mask = chat_format.encode_dialog(sp, conv)  # what training fed the model for this conversation
        n = len(answer["prompt_ids"])
        assert answer["prompt_ids"] == ids[:n]
        assert mask[n - 1] == 0 and mask[n] == 1  # the prompt ends exactly where the trained final answer starts
    for a in answers:
        assert isinstance(a["answer"], str) and 0 <= a["new_tokens"] <= 6 and a["stop"] in ("eos", "length")


@pytest.mark.slow
def test_interactive_streams_answers_and_ends_at_eof(tiny_sft_run):
    proc = run_entry(
        "chat.py",
        f"run={tiny_sft_run}",
        "generate.max_new_tokens=5",
        input="Hello there\nAnd then?\n/reset\n/system Be brief.\nHi\n",
    )
    assert proc.stdout.count("assistant> ") == 3
    assert proc.stdout.count("(history cleared)") == 2
    assert "(history cleared) system prompt: 'Be brief.'" in proc.stdout  # /system says what it set
    assert proc.stdout.endswith("\nuser> \n")  # Ctrl-D ends the prompt line
    assert "quant=nf4" in proc.stdout  # a QLoRA run is loaded 4-bit, as it was trained


def test_history_and_system_prompt_make_the_next_prompt_and_old_turns_drop_to_fit(tiny_sft_run):
    sp = loading.load_tokenizer(tiny_sft_run, rundir.run_config(tiny_sft_run)).sp
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    ids, kept = chat.dialog_ids(sp, "Be brief.", history, budget=4096)
    assert kept == history
    assert ids == chat_format.encode_prompt(sp, [{"role": "system", "content": "Be brief."}, *history])
    ids, kept = chat.dialog_ids(sp, "Be brief.", history, budget=len(ids) - 1)
    assert kept == history[2:]
    assert ids == chat_format.encode_prompt(sp, [{"role": "system", "content": "Be brief."}, *history[2:]])


def test_bad_run_and_bad_prompts_fail_before_weights_load(tiny_sft_run, tmp_path):
    proc = run_entry("chat.py", f"run={tmp_path}", check=False)
    assert proc.returncode == 2
    assert f"run={tmp_path}: no config.yaml there" in proc.stderr

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    proc = run_entry("chat.py", f"run={tiny_sft_run}", f"prompts={prompts}", check=False)
    assert proc.returncode == 2
    assert f"{prompts}:2: message 0 has role 'assistant', expected 'user'" in proc.stderr
    assert "Loading weights" not in proc.stderr
