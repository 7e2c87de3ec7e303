"""What every entry point shares: keys added with `++` are one error through `config.schema_object`, and importing
the package changes no warning filter or logger (the entry points quiet library notices when they start)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_entry


@pytest.mark.parametrize(
    "script, override, key, fix",
    [
        ("chat.py", "++merge=true", "merge", "merged"),
        ("export.py", "++verfy.prompts=2", "verfy", "verify"),
        ("publish.py", "++privat=true", "privat", "private"),
        ("evaluate.py", "++splt=eval", "splt", "split"),
    ],
)
def test_an_added_key_is_one_error_in_every_entry_point(tmp_path, script, override, key, fix):
    proc = run_entry(
        script,
        f"run={tmp_path / 'no-run'}",
        override,
        *(["repo_id=me/x"] if script == "publish.py" else []),
        check=False,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.splitlines() == [
        "error: invalid config:",
        f"  - {key}: no such key; did you mean {fix}? (a "
        "+/++ override adds keys that nothing reads); remove it or fix the spelling",
    ]


def test_importing_the_package_changes_no_global_setting():
    code = (
        "import logging, warnings\n"
        "from finetune.runtime import console\n"
        "from finetune.training import orpo, pairwise, simpo\n"
        "ours = lambda: [f for f in warnings.filters if f[1] and ('is_gradient_checkpointing' in f[1].pattern or "
        "'trl' in f[1].pattern)]\n"
        "assert not ours(), ours()\n"
        "assert logging.getLogger('bitsandbytes.backends.cpu.ops').level == logging.NOTSET\n"
        "assert not logging.getLogger('trl.experimental.orpo.orpo_trainer').filters\n"
        "console.quiet_library_notices(); pairwise.quiet_notices(); pairwise.quiet_notices()\n"
        "assert logging.getLogger('bitsandbytes.backends.cpu.ops').level == logging.ERROR\n"
        "assert len(logging.getLogger('trl.experimental.cpo.cpo_trainer').filters) == 1 and len(ours()) == 2\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "argv", [["train.py", "--help"], ["plan.py", "recipe=qlora_13b", "--cfg", "job"], ["sweep.py", "--help"]]
)
def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback(argv):
    """`python finetune/train.py --help | head -1`: head exits after a line; the rest goes nowhere, exit code 1, and no
    BrokenPipeError traceback (the pipe here is closed before the command writes anything, so it always happens)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "finetune" / argv[0]), *argv[1:]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
