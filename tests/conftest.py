"""Shared test setup: offline, deterministic, and one tiny trained run reused by the tests that need one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import demo

ROOT = Path(__file__).resolve().parent.parent
# An accidental hub download fails at once instead of after 46 s of retries; wandb never goes online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")
# The tiny random base model is written once per test session, shared by every run.
os.environ.setdefault("FINETUNE_CACHE", str(ROOT / ".cache" / "test"))

# Small and fast, but the real code path: real tokenizer, real bundled data, real TRL loop.
FAST = [
    "data.max_samples=16",
    "data.max_length=256",
    "data.too_long=truncate",
    "data.eval_fraction=0.25",
    "trainer.max_steps=4",
    "trainer.micro_batch_size=2",
    "trainer.logging_steps=1",
    "trainer.save_steps=2",
    "eval.max_new_tokens=8",
]


# `make test` runs files in two worker processes (pytest-xdist, one file per worker at a time): the longest files
# start first, so that neither worker is left running a long file alone at the end.
LONGEST_FIRST = [
    "integration/test_readme.py",
    "integration/test_sweep.py",
    "integration/test_slurm.py",
    "integration/test_train.py",
    "integration/test_benchmarks.py",
    "integration/test_resume.py",
    "integration/test_chat_modes.py",
    "integration/test_preview.py",
    "integration/test_demo.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.path).relative_to(ROOT / "tests").as_posix(), len(rank)))


@pytest.fixture(autouse=True)
def _one_environ(monkeypatch):
    """os.environ is the same object after every test: datasets' Dataset.map(num_proc=) replaces it with a deep copy
    of itself (datasets 5.2, arrow_dataset.py), and a test's monkeypatch.setenv is then undone on the old object and
    leaks into the next tests (seen: one test's $FINETUNE_CACHE in a later test's training run)."""
    monkeypatch.setattr(os, "environ", os.environ)


def run_entry(
    script: str,
    *overrides: str,
    launcher: str = "python",
    check: bool = True,
    timeout: int = 600,
    env: dict | None = None,
    input: str = "",
) -> subprocess.CompletedProcess:
    """Run a finetune/ entry point the way a user does; `launcher="accelerate"` goes through accelerate launch.
    `input` is the process's stdin (what a user types; empty: end of input at once)."""
    if launcher == "accelerate":
        cmd = [sys.executable, *demo.ONE_PROCESS, str(ROOT / "finetune" / script)]
    else:
        cmd = [sys.executable, str(ROOT / "finetune" / script)]
    proc = subprocess.run(
        cmd + list(overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd[-1:] + list(overrides))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(path)` once per test session, whichever `make test` worker asks first; the other worker waits for it
    and reads the same folder (pytest-xdist's workers share the parent of their temporary folders)."""
    import shutil

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "shared" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        done = out.with_name(name + ".done")
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory) -> Path:
    """A finished tiny QLoRA SFT run directory (adapter/, checkpoints/, metrics.jsonl, config.yaml)."""
    return built_once(
        tmp_path_factory,
        "tiny_qlora",
        lambda out: run_entry("train.py", "recipe=tiny_qlora", f"output_dir={out}", *FAST),
    )


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory) -> Path:
    """A finished tiny 16-bit LoRA SFT run directory."""
    return built_once(
        tmp_path_factory, "tiny_lora", lambda out: run_entry("train.py", "recipe=tiny_lora", f"output_dir={out}", *FAST)
    )


@pytest.fixture(scope="session")
def tiny_lora_merged(tiny_lora_run, tmp_path_factory) -> Path:
    """A copy of `tiny_lora_run` (no checkpoints) with merged/ from `export.py merge=true` (float32, verified):
    for the tests that need merged weights (chat merged=true, publish what=merged). Read it, never change it."""
    import shutil

    def merge(out: Path) -> None:
        shutil.copytree(tiny_lora_run, out, ignore=shutil.ignore_patterns("checkpoints"))
        run_entry("export.py", f"run={out}", "merge=true", "verify.prompts=2", "verify.max_new_tokens=4")

    return built_once(tmp_path_factory, "tiny_lora_merged", merge)


def compose(*overrides: str):
    """The composed train config (a DictConfig), as the entry points see it, without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from finetune import config

    config.register()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))
