"""Which lm_eval tasks a list of names means, built with their data before any weights load.

Three places, searched in this order: `benchmarks.include=<folder>` (your own task YAMLs), the shipped offline
subsets in data/benchmarks/, then lm_eval's stock tasks (which download their data from the Hugging Face Hub).
A relative `data_files` path in a task YAML is relative to that YAML's folder, so a task folder works from any
working directory and on any machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from finetune.config.errors import UserError
from finetune.config.paths import ROOT
from finetune.runtime import console

SHIPPED = ROOT / "data" / "benchmarks"
INSTALL = "pip install lm_eval==0.4.13 (or pip install -e '.[eval]')"


class BenchmarkError(UserError):
    """A benchmark that cannot run: unknown task, missing data, lm_eval absent, an offline stock task."""


@dataclass
class Built:
    tasks: list  # lm_eval Task objects, data loaded
    manager: object  # the lm_eval TaskManager that indexed them
    stock: list[str]  # names that came from lm_eval's own task folder


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise BenchmarkError(f"benchmarks need lm-evaluation-harness, which is not installed: {INSTALL}") from None
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes (and a warning about passing a model
    #                                                       object, which is how we use it) would bury our table


def folders(include: str | None) -> list[Path]:
    """The task folders of ours to search, the user's first."""
    out = []
    if include:
        path = Path(include).expanduser().resolve()
        if not path.is_dir():
            raise BenchmarkError(
                f"benchmarks.include={include}: no such folder; give a folder holding lm_eval "
                "task YAML files (dataset_path: json, data_files beside the YAML)"
            )
        out.append(path)
    return out + [SHIPPED]


def local_manager(include: str | None):
    """A TaskManager over our folders only: indexing them takes milliseconds (lm_eval's own ~12,000 YAMLs, seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in folders(include)], include_defaults=False)


def check(names: list[str], include: str | None) -> list[str]:
    """Every name is a task we can build: an error listing the available ones otherwise. Returns the names that
    are lm_eval stock tasks (not shipped, not in include=)."""
    require_lm_eval()
    if not names:
        raise BenchmarkError("benchmarks: no task given; e.g. benchmarks=[gsm8k_mini,hellaswag_mini]")
    own = local_manager(include)
    unknown = [n for n in names if n not in own.all_tasks]
    if not unknown:
        return []
    missing = [n for n in unknown if n not in in_stock_yaml(unknown)]
    if missing:
        where = f"{SHIPPED}" + (f" and {include}" if include else "")
        raise BenchmarkError(
            f"benchmarks: unknown task {', '.join(missing)}; available here ({where}): "
            f"{', '.join(own.all_tasks)}; or any lm_eval task name (`lm_eval ls tasks`)"
        )
    return unknown


def in_stock_yaml(names: list[str]) -> dict[str, Path]:
    """{name: the folder of the first YAML in lm_eval's own task folder that declares it} (`task: x`,
    `group: x`, `tag: x` or a tag list item). A text scan: lm_eval's TaskManager parses all ~14,000 files, a
    minute on a busy 2-core machine, too long to tell a user their task name is misspelled."""
    import lm_eval.tasks

    if not names:
        return {}
    pattern = re.compile(r"(?m)^\s*(?:-\s*|task:\s*|group:\s*|tag:\s*)(" + "|".join(map(re.escape, names)) + r")\s*$")
    found: dict[str, Path] = {}
    for path in sorted(Path(lm_eval.tasks.__file__).parent.rglob("*.yaml")):
        for name in pattern.findall(path.read_text(errors="replace")):
            found.setdefault(name, path.parent)
        if len(found) == len(set(names)):
            break
    return found


def build(names: list[str], include: str | None) -> Built:
    """The lm_eval Task objects for `names`, their data read now (a bad data file fails here, before weights)."""
    stock = check(names, include)
    own = local_manager(include)
    tasks = []
    for name in names:
        if name in stock:
            continue
        yaml_path = Path(own.task_index[name].yaml_path)
        with inside(yaml_path.parent), console.datasets_bars(False):  # relative data_files: from the working dir
            try:
                tasks += list(own.load([name])["tasks"].values())
            except (FileNotFoundError, ValueError) as exc:
                raise BenchmarkError(
                    f"{yaml_path}: task {name} cannot read its data ({exc}); data_files paths "
                    "are relative to the YAML's folder"
                ) from None
    for name, folder in in_stock_yaml(stock).items():
        tasks += list(load_stock(stock_manager(name, folder), name).values())
    return Built(tasks, own, stock)


def stock_manager(name: str, folder: Path):
    """A TaskManager that knows `name`: over its own folder when that suffices (milliseconds), else all of
    lm_eval's tasks (a group whose members live elsewhere)."""
    from lm_eval.tasks import TaskManager

    near = TaskManager(include_path=str(folder), include_defaults=False)
    return near if name in near.all_tasks else TaskManager()


@contextlib.contextmanager
def inside(folder: Path):
    """The working directory set to `folder` for the block (contextlib.chdir is Python 3.11+)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def load_stock(manager, name: str) -> dict:
    """A stock lm_eval task: its data comes from the Hub (or the datasets cache when offline)."""
    offline = any(os.environ.get(k, "0") not in ("0", "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        with console.datasets_bars(False):
            return manager.load([name])["tasks"]
    except Exception as exc:  # datasets raises ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        path = getattr(manager.task_index.get(name), "yaml_path", None)
        why = (
            f"it downloads its data from the Hugging Face Hub and this process is offline "
            f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set); run once with the network to fill the datasets cache, "
            f"or use a shipped task ({', '.join(local_manager(None).all_tasks)})"
            if offline
            else f"loading its data failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise BenchmarkError(f"benchmarks: lm_eval task {name} ({path}) cannot run: {why}") from None
