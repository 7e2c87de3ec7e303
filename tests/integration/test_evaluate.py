"""finetune/evaluate.py: loss and perplexity of a run against its bare base, saved beside the run."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.conftest import FAST, run_entry
from finetune.runs import metrics


@pytest.fixture
def run(tiny_sft_run, tmp_path):
    """The session's tiny SFT run, copied (evaluate.py writes eval/ into the run it scores)."""
    dst = tmp_path / tiny_sft_run.name
    shutil.copytree(tiny_sft_run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


@pytest.mark.slow
def test_training_lowers_the_loss_on_the_training_data_and_a_bare_model_matches_the_base_row(run, tmp_path):
    proc = run_entry("evaluate.py", f"run={run}", "split=train")
    saved = json.loads((run / "eval" / "oasst-train.json").read_text())
    base, trained = saved["results"]
    assert base["model"] == "base llama2_tiny (nf4)" and trained["model"] == "tiny_qlora (adapter)"
    assert trained["loss"] < base["loss"] - 0.005  # 4 steps at lr 2e-3 lower it by ~0.03 (10.389 -> 10.361)
    for r in (base, trained):
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
        assert r["examples"] == 12 and r["tokens"] == base["tokens"] > 0  # 16 samples, a quarter held out
        assert f"{r['loss']:.4f}" in proc.stdout  # the summary table

    # The same base without a run: model= + data= + the run's data settings, 4-bit as the run loaded it
    out = tmp_path / "bare.json"
    data = [o for o in FAST if o.startswith("data.")]
    run_entry("evaluate.py", "model=llama2_tiny", "data=oasst", *data, "quant=nf4", "split=train", f"out={out}")
    (bare,) = json.loads(out.read_text())["results"]
    assert bare["tokens"] == base["tokens"]
    assert bare["loss"] == pytest.approx(base["loss"], abs=1e-5)


@pytest.mark.slow
def test_held_out_loss_reproduces_the_trainers_final_eval_loss(run):
    run_entry("evaluate.py", f"run={run}", "base=false")
    (trained,) = json.loads((run / "eval" / "oasst-eval.json").read_text())["results"]
    last_eval = [r for r in metrics.read(run / "metrics.jsonl") if "eval_loss" in r][-1]
    assert trained["examples"] == 4
    assert trained["loss"] == pytest.approx(last_eval["eval_loss"], abs=1e-3)


def test_missing_run_and_bad_split_are_reported_together_before_weights_load():
    proc = run_entry("evaluate.py", "split=test", check=False)
    assert proc.returncode == 2
    assert "split=test: use one of eval, train, all" in proc.stderr
    assert "run: required; give run=outputs/<run>, or model=<name> data=<name>" in proc.stderr


@pytest.mark.slow
def test_split_all_scores_both_splits_token_weighted(tiny_sft_run, tmp_path):
    """README: `split=eval|train|all`; all = the training and the held-out conversations together, token-weighted."""
    from finetune import evaluate
    from finetune.runs import rundir
    from finetune.ship import loading

    out = tmp_path / "all.json"
    run_entry("evaluate.py", f"run={tiny_sft_run}", "split=all", "base=false", f"out={out}")
    (every,) = json.loads(out.read_text())["results"]
    train_cfg = rundir.run_config(tiny_sft_run)
    tokenizer = loading.load_tokenizer(tiny_sft_run, train_cfg)
    model = loading.add_adapter(loading.load_base(tiny_sft_run, train_cfg, tokenizer, None), tiny_sft_run)
    parts = [evaluate.split_dataset(train_cfg.data, tokenizer, split) for split in ("train", "eval")]
    assert every["examples"] == sum(len(p) for p in parts) == 16  # 12 trained on + 4 held out
    assert every["tokens"] == sum(sum(map(sum, p["assistant_masks"])) for p in parts)  # answers + EOS, both splits
    losses = [evaluate.token_loss(model, p, 4, tokenizer.pad_id) for p in parts]
    weighted = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert every["loss"] == pytest.approx(weighted, abs=1e-5)
    assert every["perplexity"] == pytest.approx(math.exp(every["loss"]), rel=1e-9)
