"""The toolkit as a wheel: built from the repository, installed into a fresh virtual environment, run from a folder
outside the checkout through its console commands. The environment reuses this one's installed dependencies (a
.pth line to its site-packages) so nothing is downloaded; the toolkit itself comes only from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT

SOURCES = ("finetune", "configs", "recipes", "data", "pyproject.toml", "README.md", "LICENSE")


def build_wheel(tmp: Path) -> Path:
    """`pip wheel` over a copy of the repository's sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return next((tmp / "dist").glob("finetune-*.whl"))


def venv_with(wheel: Path, tmp: Path) -> Path:
    """A fresh venv holding the wheel, seeing this environment's dependencies after its own site-packages."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "zz_deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return venv


@pytest.mark.slow
def test_the_wheel_installs_a_working_toolkit(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.name for p in (ROOT / "finetune").iterdir() if (p / "__init__.py").is_file())
    assert [p for p in packages if f"finetune/{p}/__init__.py" not in names] == []
    for shipped in (
        "configs/train.yaml",
        "recipes/tiny_qlora.yaml",
        "data/llama2-tokenizer/tokenizer.model",
        "data/llama2-tokenizer/LICENSE-LLAMA2",
        "data/sft/oasst-en100/en_100_tree.jsonl",
    ):
        assert f"finetune/bundled/{shipped}" in names, shipped
    assert "finetune/runs/card.md" in names  # the model card's template

    venv = venv_with(wheel, tmp_path)
    away = tmp_path / "elsewhere"  # no configs/, recipes/ or data/ here: only the installed package has them
    away.mkdir()
    env = {**os.environ, "FINETUNE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(venv / "bin" / cmd[0]), *cmd[1:]], cwd=away, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    where = run("python", "-c", "import finetune.config as c; print(c.__file__); print(c.ROOT)")
    package = Path(where.stdout.splitlines()[0]).parent.parent
    assert package.is_relative_to(venv) and where.stdout.splitlines()[1] == str(package / "bundled")

    printed = OmegaConf.create(run("finetune-train", "recipe=tiny_qlora", "--cfg", "job", "--resolve").stdout)
    assert printed.model.name == "llama2_tiny" and printed.quant.mode == "nf4" and printed.trainer.kind == "sft"
    assert printed.data.path == str(package / "bundled" / "data" / "sft" / "oasst-en100" / "en_100_tree.jsonl")
    assert printed.model.tokenizer == str(package / "bundled" / "data" / "llama2-tokenizer")

    out = run("finetune-preview", "recipe=tiny_qlora", "n=1").stdout
    assert out.count("── example 0: ") == 1 and "<s>[INST] " in out and "data: oasst: " in out
    assert "preflight: PASS" in out
    assert "plan: llama2_13b" in run("finetune-plan", "recipe=qlora_13b", "gpus=1", "gpu_memory=80GB").stdout
    assert not (away / "outputs").exists() and sorted(p.name for p in away.iterdir()) == []
