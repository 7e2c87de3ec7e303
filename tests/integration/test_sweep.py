"""Local sweeps end to end: each trial an `accelerate launch finetune/train.py` subprocess of the sweep file's
command, ranked by the eval loss in its metrics.jsonl, a failed trial recorded, resumable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_entry
from finetune.runs import metrics
from finetune.sweeps import logged

# A trial in a few seconds: 2 optimizer steps, evaluated (and checkpointed) at step 2, no sample generations.
TRIAL_FAST = [
    "data.max_samples=12",
    "data.max_length=256",
    "data.too_long=truncate",
    "data.eval_fraction=0.25",
    "trainer.max_steps=2",
    "trainer.save_steps=2",
    "trainer.micro_batch_size=2",
    "trainer.logging_steps=1",
    "eval.samples=0",
]
COMMAND = ["${env}", "accelerate", "launch", "finetune/train.py", "${args_no_hyphens}"]


def trials(sweep_dir: Path) -> dict[int, dict]:
    """The last record of every trial in trials.jsonl."""
    rows = [json.loads(line) for line in (sweep_dir / "trials.jsonl").read_text().splitlines()]
    return {r["trial"]: r for r in rows}


def last_eval_loss(run_dir: str) -> float:
    return [r["eval_loss"] for r in metrics.read(Path(run_dir) / "metrics.jsonl") if "eval_loss" in r][-1]


def assert_leaderboard(sweep_dir: Path, finished: list[dict], n_trials: int) -> None:
    """Finished trials ranked by eval loss (lowest first) in the CSV and the markdown; the plot exists."""
    best_first = sorted(finished, key=lambda r: r["metric"])
    with (sweep_dir / "leaderboard.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_trials
    assert [int(r["trial"]) for r in rows[: len(finished)]] == [r["trial"] for r in best_first]
    assert [r["rank"] for r in rows[: len(finished)]] == [str(i + 1) for i in range(len(finished))]
    assert [float(r["eval/loss"]) for r in rows[: len(finished)]] == [pytest.approx(r["metric"]) for r in best_first]
    md = (sweep_dir / "leaderboard.md").read_text()
    assert f"Best: trial {best_first[0]['trial']}, eval/loss = {best_first[0]['metric']:.6g}" in md
    png = (sweep_dir / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_grid_sweep_ranks_trials_records_a_failure_and_resumes(tmp_path):
    sweep_file = tmp_path / "rank_grid.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "program": "finetune/train.py",
                "method": "grid",
                "metric": {"name": "eval/loss", "goal": "minimize"},
                "parameters": {
                    "recipe": {"value": "tiny_lora"},
                    "tracking": {"value": "tensorboard"},
                    "lora.r": {"values": [4, 0, 8]},
                },  # lora.r=0 fails the trial's config check
                "command": COMMAND,
            },
            sort_keys=False,
        )
    )
    out = tmp_path / "sweep"
    proc = run_entry("sweep.py", str(sweep_file), f"sweep_dir={out}", *TRIAL_FAST)
    assert "trial 2/3 failed (exit 1: error: invalid config: - lora.r=0: must be a positive integer" in proc.stdout

    records = trials(out)
    assert [records[n]["status"] for n in (1, 2, 3)] == ["finished", "failed", "finished"]
    assert [records[n]["params"] for n in (1, 2, 3)] == [{"lora.r": 4}, {"lora.r": 0}, {"lora.r": 8}]
    assert records[2]["error"].startswith("exit 1: error: invalid config: - lora.r=0: must be a positive integer")
    assert "Traceback" not in records[2]["error"]  # accelerate's own traceback after the run's message is left out
    finished = [records[1], records[3]]
    for r in finished:  # the metric is the run's own last eval loss; each trial its own run dir and tracker
        assert r["output_dir"] == str(out / f"trial-{r['trial']:03d}")
        assert r["metric"] == pytest.approx(last_eval_loss(r["output_dir"]))
        assert list((Path(r["output_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
        log = (Path(r["output_dir"]) / "trial.log").read_text()
        assert log.startswith(
            "$ /usr/bin/env accelerate launch finetune/train.py recipe=tiny_lora "
            "tracking=tensorboard data.max_samples=12 "
        )
        assert f"lora.r={r['params']['lora.r']} output_dir={r['output_dir']}\n" in log.splitlines(keepends=True)[0]
    assert_leaderboard(out, finished, 3)

    # Interrupted after trial 3 trained but before it was recorded: the rerun records it without training again.
    lines = (out / "trials.jsonl").read_text().splitlines()
    (out / "trials.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert trials(out)[3]["status"] == "started"
    proc = run_entry("sweep.py", str(sweep_file), f"sweep_dir={out}", *TRIAL_FAST)
    assert "3 recorded" in proc.stdout and "trial 3/3: eval/loss=" in proc.stdout
    assert "trial 3/3: lora.r=8" not in proc.stdout  # no new training run
    assert trials(out)[3]["metric"] == pytest.approx(records[3]["metric"])
    # a finished sweep run again does nothing
    proc = run_entry("sweep.py", str(sweep_file), f"sweep_dir={out}", *TRIAL_FAST)
    assert "trial " not in proc.stdout.replace("best: trial", "") and "best: trial" in proc.stdout


@pytest.mark.slow
def test_bayes_sweep_of_the_shipped_file_on_the_tiny_model(tmp_path):
    out = tmp_path / "qlora_lr"
    proc = run_entry(
        "sweep.py",
        "launch/sweeps/qlora_lr.yaml",
        "trials=3",
        f"sweep_dir={out}",
        "recipe=tiny_lora",
        "tracking=none",
        *TRIAL_FAST,
    )
    records = trials(out)
    assert sorted(records) == [1, 2, 3] and all(r["status"] == "finished" for r in records.values()), records
    for r in records.values():
        assert set(r["params"]) == {"trainer.learning_rate", "lora.r"}
        assert 3.0e-5 <= r["params"]["trainer.learning_rate"] <= 1.0e-3 and r["params"]["lora.r"] in (8, 16, 32, 64)
        assert r["metric"] == pytest.approx(last_eval_loss(r["output_dir"]))
        logged_keys = {k for row in metrics.read(Path(r["output_dir"]) / "metrics.jsonl") for k in row} - {"step"}
        assert logged_keys <= set(logged.names("sft"))  # what a sweep's metric is checked against, before a trial
        run_cfg = yaml.safe_load((Path(r["output_dir"]) / "config.yaml").read_text())
        assert run_cfg["lora"]["r"] == r["params"]["lora.r"]  # the trial's values reached the run
        assert run_cfg["trainer"]["learning_rate"] == pytest.approx(r["params"]["trainer.learning_rate"])
        assert run_cfg["trainer"]["max_steps"] == 2 and run_cfg["tracking"]["backend"] == "none"
    assert len({r["params"]["trainer.learning_rate"] for r in records.values()}) == 3
    assert_leaderboard(out, list(records.values()), 3)
    assert (out / "sweep.yaml").read_text() == (ROOT / "launch" / "sweeps" / "qlora_lr.yaml").read_text()
    assert f"leaderboard: {out / 'leaderboard.md'}" in proc.stdout


def test_misspelled_key_stops_the_sweep_before_any_trial(tmp_path):
    out = tmp_path / "never"
    proc = run_entry("sweep.py", "launch/sweeps/qlora_lr.yaml", f"sweep_dir={out}", "lora.rank=8", check=False)
    assert proc.returncode == 2
    assert "launch/sweeps/qlora_lr.yaml: finetune/train.py rejects the trial overrides" in proc.stderr
    assert "lora.rank: no such key; did you mean lora.r?" in proc.stderr
    assert not out.exists()


def test_resuming_with_an_edited_sweep_file_is_refused_before_any_trial(tmp_path):
    """README: the sweep directory keeps the file as the sweep started; a changed file is refused on resume (its
    recorded trials were proposed from the old search space)."""
    sweep_file = tmp_path / "lr.yaml"
    original = (ROOT / "launch" / "sweeps" / "qlora_lr.yaml").read_text()
    sweep_file.write_text(original)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.yaml").write_text(original)  # what the first run of the sweep left
    record = json.dumps({"trial": 1, "status": "started", "params": {"lora.r": 8}, "output_dir": str(out / "t")})
    (out / "trials.jsonl").write_text(record + "\n")
    edited = original.replace("values: [8, 16, 32, 64]", "values: [4, 8]")
    assert edited != original
    sweep_file.write_text(edited)
    proc = run_entry("sweep.py", str(sweep_file), f"sweep_dir={out}", "recipe=tiny_lora", *TRIAL_FAST, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        f"{sweep_file} differs from the one this sweep started with ({out / 'sweep.yaml'}); choose a new "
        "sweep_dir= or restore the file" in proc.stderr
    )
    assert (out / "sweep.yaml").read_text() == original and (out / "trials.jsonl").read_text() == record + "\n"
    assert sorted(p.name for p in out.iterdir()) == ["sweep.yaml", "trials.jsonl"]  # no trial ran
