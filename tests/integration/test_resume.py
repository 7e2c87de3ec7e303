"""Resume after kill -9: the run picks up from its latest complete checkpoint and ends where an uninterrupted run
ends; a checkpoint killed mid-save is never used. Plus the run-directory rules (resume=false, overwrite=true)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, ROOT, compose, run_entry
from finetune.runs import checkpoints
from finetune.runs import metrics
from finetune.runs import rundir
from finetune.training import checks

TRAIN = [sys.executable, str(ROOT / "finetune" / "train.py"), "recipe=tiny_qlora", *FAST]


def launch(out: Path) -> subprocess.Popen:
    return subprocess.Popen(TRAIN + [f"output_dir={out}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen, poll: float, timeout: float = 300) -> bool:
    """True once `cond()` holds; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(poll)
    raise AssertionError("timed out waiting for the training process")


def kill9(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return out


def staged_since(out: Path, t0: float) -> bool:
    """A checkpoint folder is being written in the staging area by the process started at `t0`."""
    try:
        return any(p.stat().st_mtime >= t0 for p in checkpoints.staging_dir(out).glob("checkpoint-*"))
    except FileNotFoundError:  # cleared by the new process's start at this very moment
        return False


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_matches_uninterrupted_run(tiny_sft_run, tmp_path):
    """FAST = 4 optimizer steps, a checkpoint every 2. Kill 1: at a random moment after checkpoint-2 is complete.
    Kill 2: at a random moment of the restart. Kill 3: the moment checkpoint-4 starts being written (mid-save).
    Then run to the end. KILL_SEED=<n> replays a failing sequence."""
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    out = tmp_path / "killed"
    ckpt2 = out / "checkpoints" / "checkpoint-2"

    proc = launch(out)
    assert wait_for(ckpt2.is_dir, proc, poll=0.05), f"first run ended before checkpoint-2:\n{proc.stdout.read()}"
    time.sleep(rng.uniform(0.0, 1.0))
    kill9(proc)
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the run finished before the kill"
    assert not (out / "adapter").exists()

    proc = launch(out)  # kill 2: at a random moment of the restart (imports, loading, resuming)
    time.sleep(rng.uniform(0.5, 3.0))  # imports alone take longer: it dies before it can save
    kill9(proc)
    assert proc.returncode == -signal.SIGKILL and rundir.latest(out) == str(ckpt2)

    t0 = time.time()
    proc = launch(out)
    saving = wait_for(lambda: staged_since(out, t0), proc, poll=0.002)  # kill 3: checkpoint-4 half written
    log = kill9(proc)
    assert "resuming from" in log and "checkpoint-2" in log, log[-3000:]
    mid_save = saving and not (out / "checkpoints" / "checkpoint-4").exists()
    if not mid_save:  # the poll missed the window: leave what a kill mid-save leaves, a half-written copy
        shutil.rmtree(checkpoints.staging_dir(out) / "checkpoint-4", ignore_errors=True)
        (out / "checkpoints" / "checkpoint-4").rename(checkpoints.staging_dir(out) / "checkpoint-4")
        shutil.rmtree(out / "adapter", ignore_errors=True)
    partial = checkpoints.staging_dir(out) / "checkpoint-4"
    if (partial / "adapter_model.safetensors").is_file():  # make sure it can't be loaded by accident either
        (partial / "adapter_model.safetensors").write_bytes(b"\0" * 7)
    assert rundir.latest(out) == str(ckpt2)

    done = run_entry("train.py", "recipe=tiny_qlora", f"output_dir={out}", *FAST)
    assert f"resuming from {ckpt2}" in done.stdout, done.stdout[-3000:]
    diff = max_diff(out / "adapter", tiny_sft_run / "adapter")
    print(f"kill seed {seed}, third kill mid-save: {mid_save}, max |adapter - uninterrupted| = {diff:.3g}")
    assert diff <= 1e-6

    assert [p.name for p in checkpoints.complete(out)] == ["checkpoint-2", "checkpoint-4"]
    assert not checkpoints.staging_dir(out).exists()
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # rows logged after checkpoint-2 by the killed runs are not repeated


def fake_checkpoint(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"x")
    return d


def test_promote_keeps_last_k_and_staging_is_never_resumed(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        checkpoints.promote(fake_checkpoint(checkpoints.staging_dir(run) / f"checkpoint-{step}"), run, keep=2)
    fake_checkpoint(checkpoints.staging_dir(run) / "checkpoint-8")  # a save killed half way
    assert [p.name for p in checkpoints.complete(run)] == ["checkpoint-4", "checkpoint-6"]
    assert rundir.latest(run) == str(run / "checkpoints" / "checkpoint-6")
    assert not list(checkpoints.staging_dir(run).glob("deleting-*"))


def test_resume_false_starts_over_in_a_new_directory_and_overwrite_in_the_same(tmp_path):
    run = tmp_path / "run"
    checkpoints.promote(fake_checkpoint(checkpoints.staging_dir(run) / "checkpoint-3"), run, keep=2)
    assert rundir.start(str(run), "x", resume=True, overwrite=False) == (run, str(run / "checkpoints" / "checkpoint-3"))
    new, ckpt = rundir.start(str(run), "x", resume=False, overwrite=False)
    assert ckpt is None and new.parent == run.parent and new.name.startswith("run-") and not new.exists()
    assert rundir.start(str(run), "x", resume=False, overwrite=True) == (run, None)


def test_finished_run_error_names_the_three_ways_out(tmp_path):
    from finetune import config

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    problems = checks.problems(compose(f"output_dir={tmp_path}"))
    assert any("already holds a finished run" in p and "resume=false" in p and "overwrite=true" in p
               for p in problems), problems
    assert not any("finished run" in p for p in checks.problems(compose(f"output_dir={tmp_path}", "resume=false")))
