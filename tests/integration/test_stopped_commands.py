"""The commands that read a finished run (export, chat, evaluate, publish), stopped or pointed at a damaged run the
way a user does it: Ctrl-C mid-way is one line and exit 130 with the last finished result untouched; a run whose
adapter folder lost or cut a file is one error line naming the file and the fix (exit 2), never a traceback."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from finetune.runtime import console

pytestmark = pytest.mark.slow


@pytest.fixture
def merged_run(tiny_lora_merged, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_lora_merged, dst)
    return dst


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


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
