"""finetune/evaluate.py: loss and perplexity of a run against its bare base, saved beside the run."""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import FAST, run_entry
from finetune.runs import metrics


@pytest.mark.slow
def test_training_lowers_the_loss_on_the_training_data_and_a_bare_model_matches_the_base_row(tiny_sft_run):
    proc = run_entry("evaluate.py", f"run={tiny_sft_run}", "split=train")
    saved = json.loads((tiny_sft_run / "eval" / "oasst-train.json").read_text())
    base, trained = saved["results"]
    assert base["model"] == "base llama2_tiny (nf4)" and trained["model"] == "tiny_qlora (adapter)"
    assert trained["loss"] < base["loss"] - 0.005  # 4 steps at lr 2e-3 lower it by ~0.03 (10.389 -> 10.361)
    for r in (base, trained):
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
        assert r["examples"] == 12 and r["tokens"] == base["tokens"] > 0  # 16 samples, a quarter held out
        assert f"{r['loss']:.4f}" in proc.stdout  # the summary table

    # The same base without a run: model= + data= + the run's data settings, 4-bit as the run loaded it
    out = tiny_sft_run / "bare.json"
    data = [o for o in FAST if o.startswith("data.")]
    run_entry("evaluate.py", "model=llama2_tiny", "data=oasst", *data, "quant=nf4", "split=train", f"out={out}")
    (bare,) = json.loads(out.read_text())["results"]
    assert bare["tokens"] == base["tokens"]
    assert bare["loss"] == pytest.approx(base["loss"], abs=1e-5)


@pytest.mark.slow
def test_held_out_loss_reproduces_the_trainers_final_eval_loss(tiny_sft_run):
    run_entry("evaluate.py", f"run={tiny_sft_run}", "base=false")
    (trained,) = json.loads((tiny_sft_run / "eval" / "oasst-eval.json").read_text())["results"]
    last_eval = [r for r in metrics.read(tiny_sft_run / "metrics.jsonl") if "eval_loss" in r][-1]
    assert trained["examples"] == 4
    assert trained["loss"] == pytest.approx(last_eval["eval_loss"], abs=1e-3)


def test_missing_run_and_bad_split_are_reported_together_before_weights_load():
    proc = run_entry("evaluate.py", "split=test", check=False)
    assert proc.returncode == 2
    assert "split=test: use one of eval, train, all" in proc.stderr
    assert "run: required; give run=outputs/<run>, or model=<name> data=<name>" in proc.stderr
