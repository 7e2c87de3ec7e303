"""prepare.py as a user runs it before the GPU job: it fills the tokenized cache and prints the `data:` line, the
training run with the same settings then says `tokenized cache: hit`; several at once tokenize once; bad data
exits 2 naming the line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_entry
from tests.unit.test_data_scale import conversations, write

pytestmark = pytest.mark.slow
DATA = ["recipe=tiny_lora", "data=messages", "data.max_length=256", "data.eval_fraction=0.01"]  # a short eval


def data_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("data: messages: "))


def test_prepare_fills_the_cache_and_the_training_run_reads_it(tmp_path):
    env = {"FINETUNE_CACHE": str(tmp_path / "cache")}
    data = [*DATA, f"data.path={write(tmp_path / 'chats.jsonl', conversations(3000))}"]
    out = run_entry("prepare.py", *data, "data.num_proc=2", env=env).stdout
    assert "data: 3000 examples from 3000 records; tokenizing 3000 on 2 processes" in out
    line = data_line(out)
    assert line.startswith("data: messages: 3000 examples (30 eval) from 3000 records;") and line.endswith("miss")
    assert len(list((tmp_path / "cache" / "data").glob("messages-*/rows/train/*.arrow"))) == 2
    train = run_entry(
        "train.py",
        *data,
        f"output_dir={tmp_path / 'run'}",
        "trainer.max_steps=1",
        "trainer.micro_batch_size=2",
        "trainer.grad_accum=1",
        "trainer.logging_steps=1",
        "trainer.save_steps=1",
        "eval.samples=0",
        env=env,
    ).stdout
    assert data_line(train) == line.replace("tokenized cache: miss", "tokenized cache: hit")


def test_two_prepares_at_once_tokenize_once_and_both_report_the_same_data(tmp_path):
    env = {**os.environ, "FINETUNE_CACHE": str(tmp_path / "cache")}
    data = [*DATA, f"data.path={write(tmp_path / 'chats.jsonl', conversations(2000))}"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "finetune/prepare.py"), *data],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        lines.append(data_line(out))
    assert sorted(line.rsplit(" ", 1)[1] for line in lines) == ["hit", "miss"]  # one tokenized, one waited
    assert len({line.rsplit(" ", 1)[0] for line in lines}) == 1


def test_prepare_on_bad_data_exits_2_naming_the_line(tmp_path):
    bad = json.dumps({"messages": [{"role": "assistant", "content": "first?"}]})
    path = write(tmp_path / "chats.jsonl", conversations(2500, bad={2417: bad}))
    proc = run_entry(
        "prepare.py", *DATA, f"data.path={path}", check=False, env={"FINETUNE_CACHE": str(tmp_path / "cache")}
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}:2417: message 0 has role 'assistant', expected 'user' (roles must alternate user/assistant, "
        "after an optional system message); fix the record, or set data.invalid=skip to skip such records "
        "(they are counted)"
    ]
    assert (
        "data.cache=false"
        in run_entry("prepare.py", *DATA, f"data.path={path}", "data.cache=false", check=False).stderr
    )


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid`, from /proc."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == pid:
            found.add(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it waits only for whoever adopted it to reap it)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return state.split()[1] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_prepare_killed_with_9_leaves_no_worker_processes(tmp_path):
    """The tokenizing pool's two workers and datasets' queue manager are forked children of prepare.py: a kill -9
    of prepare.py used to leave them running (blocked on pipes only their parent would close)."""
    env = {**os.environ, "FINETUNE_CACHE": str(tmp_path / "cache")}
    data = [*DATA, f"data.path={write(tmp_path / 'chats.jsonl', conversations(8000))}", "data.num_proc=2"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "finetune/prepare.py"), *data],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: set[int] = set()
    try:
        while len(workers) < 3 and proc.poll() is None:  # two pool workers and the queue manager
            workers |= children_of(proc.pid)
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert len(workers) == 3, f"prepare.py ended before its workers were seen ({workers})"
    end = time.monotonic() + 20
    while any(alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:  # clean up after a failure
        os.kill(w, signal.SIGKILL)
    assert not left, f"{len(left)} of prepare.py's processes outlived it"
