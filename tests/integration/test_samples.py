"""During training: held-out metrics in metrics.jsonl (SFT and DPO), samples.jsonl from fixed prompts, and a
wandb table of the samples when wandb is on."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_entry
from finetune.data import chat_format, examples
from finetune.data import prompts as data_prompts
from finetune.runs import metrics, rundir
from finetune.ship import loading
from finetune.training import samples


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_run_logs_eval_loss_and_perplexity_at_every_eval_and_draws_them(tiny_sft_run):
    rows = [r for r in metrics.read(tiny_sft_run / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]  # eval.every defaults to trainer.save_steps=2; 4 is the end
    for r in rows:
        assert r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]), rel=1e-9)
    assert (tiny_sft_run / "loss.png").stat().st_size > 0


def test_samples_are_the_same_held_out_prompts_before_training_at_every_eval_and_at_the_end(tiny_sft_run):
    rows = read_jsonl(tiny_sft_run / "samples.jsonl")
    assert sorted({r["step"] for r in rows}) == [0, 2, 4]
    train_cfg = rundir.run_config(tiny_sft_run)
    sp = loading.load_tokenizer(tiny_sft_run, train_cfg).sp
    train, held_out = examples.splits(train_cfg.data)  # the run's conversations; the last answer is the reference
    pool = [(ex["messages"][:-1], ex["messages"][-1]["content"]) for ex in held_out + train]
    fits = [p for p in pool if len(chat_format.encode_prompt(sp, p[0])) <= train_cfg.data.max_length]
    for step in (0, 2, 4):
        got = [(r["messages"], r["reference"]) for r in rows if r["step"] == step]
        assert got == fits[:4]  # eval.samples=4: held-out prompts first, those that fit data.max_length
        assert got[0] in pool[: len(held_out)]
    assert all(isinstance(r["answer"], str) for r in rows)


def test_samples_go_to_a_wandb_table_when_the_trainer_reports_to_wandb(tiny_sft_run, tmp_path):
    import wandb
    from transformers import TrainerControl, TrainerState, TrainingArguments

    train_cfg = rundir.run_config(tiny_sft_run)
    tokenizer = loading.load_tokenizer(tiny_sft_run, train_cfg)
    model = loading.add_adapter(loading.load_base(tiny_sft_run, train_cfg, tokenizer, None), tiny_sft_run)
    prompts = data_prompts.read_prompts(str(write_prompts(tmp_path)), tokenizer.sp)
    callback = samples.SamplesCallback(tmp_path, tokenizer, prompts, every=2, max_new_tokens=4)
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), report_to=["wandb"], use_cpu=True)
    run = wandb.init(dir=str(tmp_path), project="samples-test", settings=wandb.Settings(mode="offline"))
    try:
        callback.on_step_end(args, TrainerState(global_step=1, max_steps=4), TrainerControl(), model=model)
        callback.on_step_end(args, TrainerState(global_step=2, max_steps=4), TrainerControl(), model=model)
    finally:
        run.finish()
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert [r["step"] for r in rows] == [2, 2]  # step 1 is no eval step
    (table_file,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["step", "prompt", "answer", "reference"]
    assert [row[:3] for row in table["data"]] == [
        [2, "Hi there", rows[0]["answer"]],
        [2, "Name a colour.", rows[1]["answer"]],
    ]


def test_no_samples_under_fsdp_where_generate_cannot_run_mid_training(tmp_path, monkeypatch, capsys):
    from finetune.config import TrainConfig

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets with an FSDP config
    assert samples.callbacks(TrainConfig(), tokenizer=None, head=[], run_dir=tmp_path) == []
    assert "samples: off under FSDP" in capsys.readouterr().out


def write_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Hi there"}\n{"prompt": "Name a colour.", "system": "Be brief."}\n')
    return path


@pytest.mark.slow
def test_dpo_run_logs_held_out_reward_accuracy_and_margins_and_writes_samples(tmp_path):
    out = tmp_path / "dpo"
    run_entry(
        "train.py",
        "recipe=tiny_dpo",
        f"output_dir={out}",
        "data.max_samples=16",
        "data.eval_fraction=0.25",
        "data.max_length=256",
        "data.max_prompt_length=192",
        "trainer.max_steps=2",
        "trainer.micro_batch_size=2",
        "trainer.logging_steps=1",
        "trainer.save_steps=2",
        "eval.samples=1",
        "eval.max_new_tokens=4",
    )
    (row,) = [r for r in metrics.read(out / "metrics.jsonl") if "eval_loss" in r]
    assert row["step"] == 2
    assert 0.0 <= row["eval_rewards/accuracies"] <= 1.0 and math.isfinite(row["eval_rewards/margins"])
    assert "eval_perplexity" not in row  # a DPO loss is not a token NLL
    rows = read_jsonl(out / "samples.jsonl")
    assert [r["step"] for r in rows] == [0, 2] and rows[0]["messages"][-1]["role"] == "user"
    # The logged held-out numbers are those of the saved adapter on the held-out pairs: recomputed here with the
    # 4-bit base (the reference: a new LoRA starts at zero) and base + adapter, one pair at a time.
    margins, chosen = held_out_rewards(out)
    n = len(margins)
    assert n == 3, margins  # data.max_samples=16, a quarter held out, one of them over data.max_prompt_length
    # TRL averages per eval batch (trainer.micro_batch_size=2 pairs), then over the batches
    assert row["eval_rewards/margins"] == pytest.approx(batch_mean(margins, 2), rel=2e-3, abs=1e-5)
    assert row["eval_rewards/chosen"] == pytest.approx(batch_mean(chosen, 2), rel=2e-3, abs=1e-5)
    right = [float(m > 0) for m in margins]
    assert min(abs(m) for m in margins) < 1e-4 or row["eval_rewards/accuracies"] == batch_mean(right, 2), margins


def batch_mean(values: list[float], size: int) -> float:
    means = [sum(values[i : i + size]) / len(values[i : i + size]) for i in range(0, len(values), size)]
    return sum(means) / len(means)


def held_out_rewards(run) -> tuple[list[float], list[float]]:
    """DPO's implicit rewards beta * (log p_policy - log p_reference) of each held-out pair: (chosen - rejected,
    chosen), from the run's own tokenized eval rows."""
    import torch

    from finetune.data import load as data_load

    train_cfg = rundir.run_config(run)
    tokenizer = loading.load_tokenizer(run, train_cfg)
    held_out = data_load.load(train_cfg.data, tokenizer, "dpo").eval
    model = loading.add_adapter(loading.load_base(run, train_cfg, tokenizer, None), run)

    def logp(prompt: list[int], answer: list[int]) -> float:
        ids = torch.tensor([prompt + answer])
        token_logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])
        return token_logp[len(prompt) - 1 :].sum().item()

    margins, chosen = [], []
    with torch.no_grad():
        for row in held_out:
            p, c, r = row["llama_prompt_ids"], row["llama_chosen_ids"], row["llama_rejected_ids"]
            policy = (logp(p, c), logp(p, r))
            with model.disable_adapter():
                ref = (logp(p, c), logp(p, r))
            beta = train_cfg.trainer.beta
            margins.append(beta * ((policy[0] - ref[0]) - (policy[1] - ref[1])))
            chosen.append(beta * (policy[0] - ref[0]))
    return margins, chosen
