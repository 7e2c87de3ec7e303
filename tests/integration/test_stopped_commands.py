"""The commands that read a finished run (export, chat, evaluate, publish), stopped or pointed at a damaged run the
way a user does it: Ctrl-C mid-way is one line and exit 130 with the last finished result untouched; a run whose
adapter folder lost or cut a file is one error line naming the file and the fix (exit 2), never a traceback."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.integration.test_train import ROOT_ONLY, on_a_small_disk
from finetune.runtime import console

pytestmark = pytest.mark.slow


@pytest.fixture
def merged_run(tiny_lora_merged, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_lora_merged, dst)
    return dst


def digest(folder):
    """Every file under `folder` (its path there) with the sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ctrl_c_during_a_merge_is_one_line_and_keeps_the_earlier_merged_folder(merged_run):
    before = digest(merged_run / "merged")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "finetune" / "export.py"), f"run={merged_run}", "merge=true"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (merged_run / "merged.partial").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the user's terminal sends
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == console.INTERRUPTED
    assert digest(merged_run / "merged") == before  # the finished merged/ of before, byte for byte


@pytest.fixture
def damaged_run(tiny_lora_run, tmp_path):
    dst = tmp_path / "damaged"
    shutil.copytree(tiny_lora_run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


# Each command that reads adapter/, as a user runs it, on a run with one file of adapter/ cut (what a kill or a full
# disk during a copy leaves) or deleted: (command, file, how, the error's words for it)
DAMAGE = [
    (["export.py", "merge=true"], "adapter_model.safetensors", "cut", "cannot be read (SafetensorError: "),
    (["chat.py"], "adapter_model.safetensors", "deleted", "is missing"),
    (["evaluate.py"], "tokenizer.model", "cut", "cannot be read (RuntimeError: "),
    (["publish.py", "repo_id=me/tiny", "dry_run=true"], "adapter_model.safetensors", "cut", "cannot be read"),
]


@pytest.mark.parametrize("command, name, how, words", DAMAGE, ids=[c[0] for c, *_ in DAMAGE])
def test_a_damaged_adapter_is_one_error_line_naming_the_file(damaged_run, command, name, how, words):
    path = damaged_run / "adapter" / name
    if how == "cut":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.unlink()
    before = digest(damaged_run)
    script, *args = command
    proc = subprocess.run(
        [sys.executable, str(ROOT / "finetune" / script), f"run={damaged_run}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"run={damaged_run}: adapter/{name} {words}" in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith(
        "the run's adapter is damaged: put that file back from a copy of the run, or train the run again "
        "(overwrite=true replaces it)"
    )
    assert digest(damaged_run) == before  # nothing written into the run (no card, no merged.partial, no eval/)


def test_a_cut_benchmarks_file_is_one_error_line_and_the_card_stays_whole(damaged_run):
    results = damaged_run / "benchmarks.json"
    results.write_text('{"run": "x", "rows": [{"task": "arc_e')  # what a kill mid-write left before it was atomic
    card = (damaged_run / "adapter" / "README.md").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "finetune" / "export.py"), f"run={damaged_run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {results} cannot be read (Unterminated string starting at: line 1 column 32 (char 31)): score the "
        f"run again (`python finetune/evaluate.py run={damaged_run} benchmarks.tasks=[...]` rewrites it) or delete "
        "the file (model cards then show no benchmarks)"
    ]
    assert (damaged_run / "adapter" / "README.md").read_bytes() == card


@pytest.mark.parametrize("name, overrides", [("merged", {"merge": True}), ("gguf", {"format": "gguf"})])
def test_a_file_where_export_writes_a_folder_is_refused_before_the_merge(damaged_run, name, overrides):
    from finetune.export import ExportConfig, check

    (damaged_run / name).write_text("notes")
    assert check(ExportConfig(run=str(damaged_run), **overrides), damaged_run) == [
        f"run={damaged_run}: {damaged_run / name} is a file where export writes the folder {name}/; move it away"
    ]
    assert (damaged_run / name).read_text() == "notes"


@ROOT_ONLY
def test_a_disk_that_fills_during_a_merge_is_one_line_and_the_partial_folder_is_removed(damaged_run, tmp_path):
    """22 MB: the run (~4 MB) and the merged weights (16 MB, the merge's own check of the free space passes) fit;
    the tokenizer files saved beside them (~4 MB) do not."""
    script = f"cp -a {damaged_run} $DISK/run && {sys.executable} finetune/export.py run=$DISK/run merge=true; rc=$?; "
    proc = on_a_small_disk("22m", script + "ls -a $DISK/run >&2; exit $rc", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path}/disk/run: no space left on the disk; what this export was writing is removed "
        "(merged.partial, *.gguf.partial) and every finished folder is kept: free space, then run the same command "
        "again"
    ]
    assert "merged.partial" not in proc.stderr.splitlines() and "adapter" in proc.stderr.splitlines()


def test_a_second_export_of_a_run_stops_before_writing_while_the_first_writes(merged_run):
    """The first export holds the run's derived lock as export.py does (`lock.derived`, from the moment it starts
    to merge until it ends); the second stops at the lock, naming it, and merged/ stays the first one's."""
    before = digest(merged_run / "merged")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from finetune.runs import lock; lock.derived(sys.argv[1], 'export.py', write=True); "
            "print('held', flush=True); time.sleep(300)",
            str(merged_run),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "finetune" / "export.py"), f"run={merged_run}", "merge=true"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: run={merged_run}: merged/ and gguf/ are being written by export.py (host {socket.gethostname()}, "
        f"PID {holder.pid}) now: wait for it to end, then run export.py again"
    )
    assert digest(merged_run / "merged") == before and not (merged_run / "merged.partial").exists()


@ROOT_ONLY
def test_a_read_only_run_is_published_and_an_export_into_it_is_one_line(damaged_run):
    """A run on a read-only mount (a shared model folder): publish reads it (no reader file can be written, and no
    training job can replace it either); export, which writes the model card into it, ends with one line."""
    commands = (
        f"{sys.executable} finetune/publish.py run={damaged_run} repo_id=me/tiny dry_run=true; echo rc=$?; "
        f"{sys.executable} finetune/export.py run={damaged_run}; echo rc=$?"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        + [f"mount --bind {damaged_run} {damaged_run} && mount -o remount,bind,ro {damaged_run} && {commands}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("rc=")] == ["rc=0", "rc=2"], proc.stderr
    assert "dry run: nothing sent" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {damaged_run}/adapter/README.md."), proc.stderr
    assert errors[0].endswith(
        ": cannot write there (Read-only file system); run the command where it may write: copy the run to a "
        "writable folder (cp -r), or give out= where the command has one"
    )
