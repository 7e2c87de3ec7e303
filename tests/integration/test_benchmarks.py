"""Benchmarks end to end: `evaluate.py run=... benchmarks=[...]` on a tiny QLoRA run (shipped offline tasks, a
user's task folder), its numbers against lm_eval run the stock way on the model loaded the stock way, base = tuned
for a zero adapter, the card's model-index, and a local sweep ranked by a benchmark scored during training."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_entry
from finetune.runs import metrics

SHIPPED = ROOT / "data" / "benchmarks"
# A log-likelihood task of our own over the shipped HellaSwag items: the perplexity of the gold ending, a
# continuous score, so any change in the model shows in it (accuracy on 3 items rarely moves).
GOLD_PPL = {
    "task": "gold_ending_ppl",
    "dataset_path": "json",
    "dataset_kwargs": {"data_files": {"validation": str(SHIPPED / "hellaswag_mini" / "validation.jsonl")}},
    "validation_split": "validation",
    "output_type": "loglikelihood",
    "doc_to_text": "{{query}}",
    "doc_to_target": "{{' ' + choices[label]}}",
    "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
}


def user_tasks(tmp_path: Path) -> Path:
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "gold_ending_ppl.yaml").write_text(yaml.safe_dump(GOLD_PPL, sort_keys=False))
    return folder


def rows_of(run: Path) -> dict[tuple[str, str], dict]:
    return {(r["task"], r["metric"]): r for r in json.loads((run / "benchmarks.json").read_text())["rows"]}


def stock_lm_eval_perplexity(run: Path, include: Path) -> float:
    """lm_eval's own run, the way its docs show, on the model loaded the way the card says: the 4-bit base with
    the run's BitsAndBytesConfig, peft's adapter, the tokenizer saved beside it."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    adapter = run / "adapter"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    q = yaml.safe_load((run / "config.yaml").read_text())["quant"]
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q["mode"],
        bnb_4bit_use_double_quant=bool(q["double_quant"]),
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=bnb, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(str(adapter)), batch_size=2)
    out = simple_evaluate(
        model=lm,
        tasks=["gold_ending_ppl"],
        limit=3,
        apply_chat_template=True,
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
    )
    return out["results"]["gold_ending_ppl"]["perplexity,none"]


@pytest.mark.slow
def test_shipped_tasks_base_vs_tuned_are_lm_evals_numbers_and_reach_the_card(tiny_sft_run, tmp_path):
    run = Path(shutil.copytree(tiny_sft_run, tmp_path / "run"))
    include = user_tasks(tmp_path)
    proc = run_entry(
        "evaluate.py",
        f"run={run}",
        "benchmarks=[hellaswag_mini,gsm8k_mini,gold_ending_ppl]",
        f"benchmarks.include={include}",
        "benchmarks.limit=3",
        "benchmarks.max_gen_toks=4",
    )
    rows = rows_of(run)
    assert set(rows) == {
        ("hellaswag_mini", "acc"),
        ("hellaswag_mini", "acc_norm"),
        ("gsm8k_mini", "exact_match,strict-match"),
        ("gsm8k_mini", "exact_match,flexible-extract"),
        ("gold_ending_ppl", "perplexity"),
    }
    assert {r["n"] for r in rows.values()} == {3}
    for r in rows.values():  # the printed table is the saved one
        assert r["delta"] == pytest.approx(r["tuned"] - r["base"])
        line = f"{r['task']:<16} {r['metric']:<28} {r['base']:>8.4f} {r['tuned']:>8.4f} {r['delta']:>+8.4f}"
        assert line in proc.stdout
    assert "base: llama2_tiny (nf4); tuned: run (adapter, nf4)" in proc.stdout
    chat_note = "prompts in the Llama 2 chat format (lm_eval's chat-template path gives the ids training used)"
    assert chat_note in proc.stdout
    assert "nltk_data" not in proc.stdout + proc.stderr  # no task module tried nltk.download() (offline: an error)

    # The adapter changed the model: the gold ending's perplexity moved; the same number as lm_eval's own run
    ppl = rows[("gold_ending_ppl", "perplexity")]
    assert ppl["tuned"] != ppl["base"]
    assert stock_lm_eval_perplexity(run, include) == pytest.approx(ppl["tuned"], rel=1e-4)

    # The card publish.py uploads carries the tuned scores as Hub model-index results, and the table
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "adapter" / "README.md")
    got = {(e.dataset_name, e.metric_name): e.metric_value for e in card.data.eval_results}
    assert got[("hellaswag_mini", "acc")] == round(rows[("hellaswag_mini", "acc")]["tuned"], 4)
    assert {e.dataset_type for e in card.data.eval_results} >= {"Rowan/hellaswag", "openai/gsm8k"}
    assert "## Benchmarks" in card.text and "| hellaswag_mini | acc |" in card.text
    assert "## Training" in card.text and "## Prompt format" in card.text  # the rest of the card is kept


@pytest.mark.slow
def test_a_zero_adapter_scores_exactly_as_its_base(tiny_sft_run, tmp_path):
    """Catches "adapter not applied" (the test above) and "wrong base" (here: tuned must equal base exactly)."""
    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(tiny_sft_run, tmp_path / "run"))
    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in tensors.items()}, path)
    run_entry(
        "evaluate.py",
        f"run={run}",
        "benchmarks=[gold_ending_ppl,hellaswag_mini]",
        f"benchmarks.include={user_tasks(tmp_path)}",
        "benchmarks.limit=3",
    )
    rows = rows_of(run)
    assert len(rows) == 3
    assert all(r["tuned"] == r["base"] and r["delta"] == 0 for r in rows.values())


@pytest.mark.slow
def test_an_unknown_task_is_one_line_before_any_weights(tiny_sft_run, tmp_path):
    run = Path(shutil.copytree(tiny_sft_run, tmp_path / "run"))
    proc = run_entry("evaluate.py", f"run={run}", "benchmarks=[gsm8k_mini,hellaswg]", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: benchmarks: unknown task hellaswg; available here ({SHIPPED}): gsm8k_mini, hellaswag_mini; "
        "or any lm_eval task name (`lm_eval ls tasks`)"
    ]
    assert not (run / "benchmarks.json").exists() and "Running" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_local_sweep_ranks_trials_by_a_benchmark_scored_at_the_end_of_training(tmp_path):
    """metric benchmark/<task>/<metric>: each trial runs eval.benchmarks=[task] (the training callback), logs
    eval_benchmark/<task>/<metric> to metrics.jsonl, and the leaderboard ranks by it, highest first."""
    sweep_file = tmp_path / "bench.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "program": "finetune/train.py",
                "method": "grid",
                "metric": {"name": "benchmark/hellaswag_mini/acc_norm", "goal": "maximize"},
                "parameters": {
                    "recipe": {"value": "tiny_lora"},
                    "eval.benchmark_limit": {"value": 4},
                    "trainer.learning_rate": {"values": [0.002, 0.05]},
                },
                "command": ["${env}", "python", "finetune/train.py", "${args_no_hyphens}"],
            },
            sort_keys=False,
        )
    )
    out = tmp_path / "sweep"
    proc = run_entry(
        "sweep.py",
        str(sweep_file),
        f"sweep_dir={out}",
        "data.max_samples=8",
        "data.max_length=256",
        "data.too_long=truncate",
        "trainer.max_steps=1",
        "trainer.micro_batch_size=2",
        "eval.samples=0",
    )
    assert "each trial scores hellaswag_mini at its end (eval.benchmarks=[hellaswag_mini]" in proc.stdout
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    done = {r["trial"]: r for r in records if r["status"] == "finished"}
    assert sorted(done) == [1, 2]
    for r in done.values():
        logged = [
            row
            for row in metrics.read(Path(r["output_dir"]) / "metrics.jsonl")
            if "eval_benchmark/hellaswag_mini/acc_norm" in row
        ]
        assert len(logged) == 1 and logged[0]["step"] == 1  # once, at the end of training
        assert r["metric"] == logged[0]["eval_benchmark/hellaswag_mini/acc_norm"]
        assert 0 <= logged[0]["eval_benchmark/hellaswag_mini/acc"] <= 1  # every metric of the task is logged
    with (out / "leaderboard.csv").open() as fh:
        board = list(csv.DictReader(fh))
    scores = [float(row["eval/benchmark/hellaswag_mini/acc_norm"]) for row in board]
    assert scores == sorted(scores, reverse=True)
