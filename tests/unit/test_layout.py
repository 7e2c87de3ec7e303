"""The package layout holds: every import inside finetune/ (module-level and function-local) points down the
stages, so no stage reaches the weights, the trainers or the run directory from below; and the whole repository
reads as ruff formats and lints it (pyproject.toml [tool.ruff]: style, import order, a complexity limit)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# package -> the packages it may import (besides itself); entry points at the top may import any of them
ALLOWED = {
    "config": set(),
    "runtime": {"config"},
    "data": {"config", "runtime"},
    "model": {"config", "runtime", "data"},
    "runs": {"config", "runtime", "data", "benchmarks"},
    "training": {"config", "runtime", "data", "model", "runs", "benchmarks"},
    "ship": {"config", "runtime", "data", "model", "runs"},
    "planning": {"config", "runtime"},
    "sweeps": {"config", "runtime"},
    "benchmarks": {"config", "runtime", "data"},
}


def imported_packages(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("finetune"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("finetune.")}
    return found


def test_every_import_points_down_the_stages():
    assert set(ALLOWED) == {p.name for p in (ROOT / "finetune").iterdir() if (p / "__init__.py").is_file()}
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / "finetune" / package).glob("*.py")):
            for target in imported_packages(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports finetune.{target}")
    assert wrong == []


def ruff(command: str) -> None:
    """`ruff <command> .` from the repository root, as CI and a contributor run it; fails with ruff's own report
    (one line per finding). --no-cache: the check writes nothing into the tree."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed: `make setup` installs it (pyproject.toml's dev extra)")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", command, "--output-format", "concise", "--no-cache", "."]
        + (["--check"] if command == "format" else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`ruff {command}{' --check' if command == 'format' else ''} .` "
            f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}",
            pytrace=False,
        )


def test_ruff_check_finds_nothing():
    ruff("check")


def test_ruff_format_changes_nothing():
    ruff("format")


def test_the_wheel_lists_every_package_and_what_it_ships():
    """pyproject.toml names each sub-package (a new one missing there is absent from the wheel) and maps configs/,
    recipes/ and data/ into finetune/bundled/, where finetune/config/paths.py looks in an installed toolkit."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {f"finetune.{p.name}" for p in (ROOT / "finetune").iterdir() if (p / "__init__.py").is_file()}
    shipped = {f"finetune.bundled.{name}": name for name in ("configs", "recipes", "data")}
    assert set(setup["packages"]) == {"finetune", *packages, *shipped}
    assert setup["package-dir"] == shipped
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = {p.stem for p in (ROOT / "finetune").glob("*.py") if "__main__" in p.read_text()} - {"demo"}
    assert {f"finetune-{name}" for name in entry} == set(scripts)
