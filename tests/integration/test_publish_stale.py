"""A derived folder (merged/, gguf/) is never published or served against another adapter than the run's own, and
a run that is being read is not replaced under its reader: export, chat, evaluate and publish hold the run as
readers (<run>/.lock.reader-<host>-<pid>), a training job on it refuses while one does, and a new start in the
run removes what was derived from the adapter it replaces."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests import hub_double
from tests.conftest import FAST, ROOT, compose, run_entry
from finetune.runs import lock, rundir

pytestmark = pytest.mark.slow
TOKEN = "hf_" + "St4leT0ken" * 4
hub = hub_double.served({TOKEN: "tester"}, scope="function")  # each test sees only its own requests


@pytest.fixture
def run(tiny_lora_merged, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_lora_merged, dst)
    return dst


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def kept_fresh(path):
    """Touch a planted lock file as its holder would (lock.REFRESH_S): on a loaded machine the command under test
    may take longer than lock.STALE_S to reach the lock, and would then rightly take a silent lock over."""
    done = threading.Event()

    def touch():
        while not done.wait(5):
            os.utime(path)

    thread = threading.Thread(target=touch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def retrain_adapter(run):
    """adapter/ as a later training job leaves it: other weights under the same name."""
    from safetensors.torch import load_file, save_file

    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 0.5
    save_file(tensors, path, metadata={"format": "pt"})


def publish(run, hub, tmp_path, *overrides):
    return hub_double.publish(run, hub, tmp_path, *overrides, token=TOKEN)


def test_merged_from_another_adapter_is_neither_published_nor_served(run, hub, tmp_path):
    old = json.loads((run / "merged" / "verification.json").read_text())["adapter_sha256"]
    assert old == rundir.adapter_hash(run)  # export recorded the adapter merged/ came from
    retrain_adapter(run)
    stale = (
        f"run={run}: merged/ was derived from another adapter (sha256 {old[:12]}; adapter/ is now "
        f"{rundir.adapter_hash(run)[:12]}); derive it again from the current adapter: "
        f"`python finetune/export.py run={run} merge=true`"
    )
    proc = publish(run, hub, tmp_path, "repo_id=tester/stale", "what=merged")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {stale}", proc.stderr[-2000:]
    assert hub.requests == []
    chat = run_entry("chat.py", f"run={run}", "merged=true", check=False)
    assert chat.returncode == 2 and chat.stderr.splitlines() == ["error: invalid config:", f"  - {stale}"], chat.stderr[
        -2000:
    ]


def test_gguf_without_an_adapter_hash_names_the_command_with_its_types(run, hub, tmp_path):
    gguf = run / "gguf"
    gguf.mkdir()
    (gguf / "README.md").write_text("card\n")
    (gguf / "run.q4_0.gguf").write_bytes(b"GGUF")
    (gguf / "verification.json").write_text(json.dumps({"files": {"run.q4_0.gguf": {"type": "q4_0"}}}))
    proc = publish(run, hub, tmp_path, "repo_id=tester/stale-gguf", "what=gguf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: run={run}: gguf/ records no adapter hash, so it may come from another "
        "adapter; derive it again from the current adapter: `python finetune/export.py "
        f"run={run} format=gguf gguf.type=[q4_0]`"
    )


def test_overwrite_refuses_while_a_reader_holds_the_run(run, sleeper):
    host = socket.gethostname()
    reader = run / f"{lock.READER}{host}-{sleeper}"
    reader.write_text(
        json.dumps(
            {"host": host, "pid": sleeper, "job": None, "started": "2026-12-07 10:00:00", "command": "export.py"}
        )
    )
    before = rundir.adapter_hash(run)
    with kept_fresh(reader):
        proc = run_entry("train.py", "recipe=tiny_lora", f"output_dir={run}", "overwrite=true", *FAST, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: output_dir={run} is being read by export.py (host {host}, PID {sleeper}, started 2026-12-07 "
        "10:00:00): wait for it to end, then start again"
    )
    assert rundir.adapter_hash(run) == before and (run / "merged" / "config.json").is_file()
    assert not (run / lock.LOCK).exists()


def test_a_reader_does_not_start_while_a_training_job_writes_the_run(run, sleeper):
    host = socket.gethostname()
    (run / lock.LOCK).write_text(
        json.dumps({"host": host, "pid": sleeper, "job": None, "started": "2026-12-07 10:00:00"})
    )
    with kept_fresh(run / lock.LOCK):
        proc = run_entry("chat.py", f"run={run}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: run={run} is being written by a training job (host {host}, PID {sleeper}, started 2026-12-07 "
        "10:00:00): wait for it to end, then run chat.py again"
    )


def test_export_holds_the_run_as_a_reader_while_it_merges(run):
    shutil.rmtree(run / "merged")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "finetune" / "export.py"),
            f"run={run}",
            "merge=true",
            "verify.prompts=1",
            "verify.max_new_tokens=2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held, deadline = None, time.time() + 120
    while held is None and proc.poll() is None and time.time() < deadline:
        files = list(run.glob(lock.READER + "*"))
        held = json.loads(files[0].read_text()) if files else None
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert held is not None and held["command"] == "export.py" and held["pid"] == proc.pid
    assert not list(run.glob(".lock*"))  # released at exit
    assert json.loads((run / "merged" / "verification.json").read_text())["adapter_sha256"] == rundir.adapter_hash(run)


def test_a_new_start_removes_what_was_derived_from_the_old_adapter(run):
    dict_cfg = compose("recipe=tiny_lora", f"output_dir={run}", "overwrite=true")
    (run / "gguf").mkdir()
    rundir.prepare(run, dict_cfg, None)
    lock.release(run)
    assert not (run / "merged").exists() and not (run / "gguf").exists()
    assert (run / "adapter" / "adapter_config.json").is_file()  # replaced only when the new adapter is complete
