"""The run directory: one for every rank, what it holds, and reading it back.

Layout: <run>/config.yaml, <run>/inputs.json (see `inputs`), <run>/checkpoints/checkpoint-N/ (complete ones only;
see `checkpoints`), <run>/adapter/, <run>/metrics.jsonl, <run>/wandb_run_id. chat, evaluate, export and publish
read a run through `run_config` and `finished` here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from finetune import config
from finetune.config import ConfigError, TrainConfig
from finetune.runs import damage, lock
from finetune.runtime import console, dist, files

STAGING = ".incomplete"  # where Trainer writes a checkpoint before it is complete (runs.checkpoints)
WANDB_ID_FILE = "wandb_run_id"  # training.tracking keeps the wandb run id there; a resume reuses it
LORA_INIT = "lora_init"  # PiSSA/OLoRA: the adapter as initialised, until the final save converts against it
# Folders derived from adapter/ by export.py, each with a verification.json recording the adapter's hash, and the
# command that derives it again.
INSIDE = ("adapter", "checkpoints", "merged", "gguf", "eval")  # what a run holds that run= is sometimes pointed at
DERIVED = {
    "merged": "python finetune/export.py run={run} merge=true",
    "gguf": "python finetune/export.py run={run} format=gguf{types}",
}


# Keys a resumed run may change: where it logs and how often, and how long it goes on (more steps continue the
# schedule from the checkpoint's step; config.yaml then records the new length), never what it trains.
RESUMABLE = (
    "output_dir",
    "resume",
    "overwrite",
    "tracking.",
    "plan.",
    "eval.samples",
    "eval.max_new_tokens",
    "eval.prompts",
    "data.cache",
    "data.num_proc",
    "trainer.logging_steps",
    "trainer.save_total_limit",
    "trainer.dataloader_workers",
    "trainer.max_steps",
)


def check(cfg) -> list[str]:
    """An output_dir holding a finished run is never replaced silently, and a resume continues the same run."""
    if not cfg.output_dir:
        return []
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        return [f"output_dir={cfg.output_dir} is a file; give a folder for the run (it is created if missing)"]
    if finished(out) and not cfg.overwrite and cfg.resume:
        return [
            f"output_dir={cfg.output_dir} already holds a finished run (adapter/ exists); "
            "choose a new output_dir=, pass resume=false (starts over in a new directory beside it) "
            "or overwrite=true (replaces it)"
        ]
    if cfg.resume and not cfg.overwrite and latest(out) and (out / "config.yaml").is_file():
        return changed_settings(out, cfg)
    return []


def changed_settings(run: Path, dict_cfg) -> list[str]:
    """A resume with other training settings than the checkpoint's: refused, the differences listed (the
    checkpoint's optimizer and schedule would go on with the old ones while config.yaml said the new)."""
    # keys added to the schema since the run started take their defaults, as `run_config` reads them
    stored = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(run / "config.yaml"))
    old = dict(config.flatten(OmegaConf.to_container(stored, resolve=True)))
    new = dict(config.flatten(OmegaConf.to_container(OmegaConf.create(config.to_yaml(dict_cfg)), resolve=True)))
    diffs = [
        f"{k}: {old.get(k, '(unset)')} in the checkpoint's run, {new.get(k, '(unset)')} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and not k.startswith(RESUMABLE)
    ]
    if not diffs:
        return []
    return [
        f"output_dir={run} resumes a run trained with other settings ({'; '.join(diffs)}); run it with the "
        "same settings, or start over: resume=false (a new directory beside it) or overwrite=true"
    ]


def finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "adapter" / "adapter_config.json").is_file()


def inside_run(run: Path) -> str | None:
    """The problem when `run=` is a folder inside a training run (its adapter/, a checkpoint-N, merged/), or the
    folder holding runs (outputs/), rather than the run directory every later stage reads; None otherwise."""
    if (run / "config.yaml").is_file():
        return None
    if runs := sorted(run.glob("*/config.yaml"), key=lambda p: p.stat().st_mtime):
        return f"run={run} holds {len(runs)} training run(s), not one; give one, e.g. the latest: run={runs[-1].parent}"
    for outer in list(run.parents)[:2]:
        if (outer / "config.yaml").is_file() and run.relative_to(outer).parts[0] in INSIDE:
            return f"run={run} is a folder inside the training run {outer}; give the run directory itself: run={outer}"
    return None


def not_a_run(run: Path) -> str | None:
    """Why `run=` is not a training run directory (no config.yaml there); None when it is one."""
    if (run / "config.yaml").is_file():
        return None
    return inside_run(run) or f"run={run}: no config.yaml there; give a training run directory (outputs/<run>)"


def run_config(run_dir: Path) -> TrainConfig:
    """The run's resolved config.yaml as the schema object (fields added to the schema since take defaults)."""
    path = Path(run_dir) / "config.yaml"
    if problem := not_a_run(Path(run_dir)):
        raise ConfigError([problem])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
    except Exception as exc:  # omegaconf's key and type errors name the key
        raise ConfigError([f"{path}: {exc}"]) from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def run_problems(run: Path, merged: bool = False) -> list[str]:
    """Why `run=` cannot be loaded (chat, evaluate): no config, unfinished, or no merged/ when asked for."""
    if problem := not_a_run(run):
        return [problem]
    if not finished(run):
        return [f"run={run}: no adapter/ yet (training unfinished?); wait for the run to end, or point at another"]
    if damaged := damage.adapter_problems(run):
        return damaged
    if merged and not (run / "merged" / "config.json").is_file():
        return [
            f"run={run}: no merged/ weights; run `python finetune/export.py run={run} merge=true` first, "
            "or drop merged=true to load base + adapter"
        ]
    if merged and (stale := derived_problem(run, "merged")):
        return [stale]
    return []


def adapter_hash(run: Path) -> str:
    """sha256 of the adapter's weights and config: what a derived folder records and is checked against."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with (Path(run) / "adapter" / name).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def recorded_hash(folder: Path) -> str | None:
    try:
        return json.loads((folder / "verification.json").read_text()).get("adapter_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def derived_problem(run: Path, what: str) -> str | None:
    """Why <run>/<what> (merged or gguf) is not derived from the run's current adapter, with the command that
    derives it again; None when it is."""
    run = Path(run)
    recorded = recorded_hash(run / what)
    if not (run / "adapter" / "adapter_model.safetensors").is_file():
        return f"run={run}: no adapter/ to check {what}/ against; {what}/ belongs to a finished run"
    current = adapter_hash(run)
    if recorded == current:
        return None
    types = sorted({str(f.get("type")) for f in files_of(run / what)})
    fix = DERIVED[what].format(run=run, types=f" gguf.type=[{','.join(types)}]" if types else "")
    why = (
        f"was derived from another adapter (sha256 {recorded[:12]}; adapter/ is now {current[:12]})"
        if recorded
        else "records no adapter hash, so it may come from another adapter"
    )
    return f"run={run}: {what}/ {why}; derive it again from the current adapter: `{fix}`"


def files_of(folder: Path) -> list[dict]:
    try:
        return list(json.loads((folder / "verification.json").read_text()).get("files", {}).values())
    except (OSError, ValueError, AttributeError):
        return []


def start(output_dir: str | None, name: str, resume: bool, overwrite: bool) -> tuple[Path, str | None]:
    """(run directory, checkpoint to resume from or None), decided once by rank 0 and shared with every rank.

    - no `output_dir`: outputs/<name>-<time>, a new run (a per-rank `${now:}` would split a run in two when a
      second boundary falls between ranks, seen in 1 of 12 launches);
    - `output_dir` holding checkpoints: resume from the newest complete one (the default after a crash);
    - `resume=false`: never resume; if `output_dir` already holds a run, start over in <output_dir>-<time>;
    - `overwrite=true`: start over in `output_dir` itself, replacing its checkpoints and metrics.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not output_dir:
        path, ckpt = Path("outputs", f"{name}-{stamp}").resolve(), None
    else:
        path = Path(output_dir).expanduser().resolve()
        if not resume and not overwrite and used(path):
            path = path.with_name(f"{path.name}-{stamp}")
        ckpt = latest(path) if resume and not overwrite else None
    path, ckpt = dist.from_rank0((str(path), ckpt))
    return Path(path), ckpt


def used(path: Path) -> bool:
    """A run has already started in `path` (its config or any checkpoint is there)."""
    return (path / "config.yaml").is_file() or (path / "checkpoints").is_dir()


def latest(path: Path) -> str | None:
    """The newest complete checkpoint under <run>/checkpoints, or None (transformers' own search: complete by
    construction, see `checkpoints.promote`)."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(path) / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def step_of(ckpt) -> int | None:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    name = Path(ckpt).name
    return int(name.split("-")[-1]) if name.startswith(PREFIX_CHECKPOINT_DIR + "-") else None


def prepare(path: Path, dict_cfg: DictConfig, resume: str | None) -> None:
    """Rank 0 takes the run directory's lock (one job per directory, before anything in it is written or
    deleted), writes the resolved config, clears what a killed save left behind and, when resuming, drops
    metrics logged after the checkpoint (they are logged again); the others wait."""
    held = None
    if dist.is_main():
        try:
            held = lock.acquire(path)
        except (ConfigError, lock.RunInUse) as exc:
            held = exc
    held = dist.from_rank0(held)
    if isinstance(held, Exception):
        raise held
    if held:
        console.info(held)
    if dist.is_main():
        (path / "config.yaml").write_text(config.to_yaml(dict_cfg))
        shutil.rmtree(path / "checkpoints" / STAGING, ignore_errors=True)
        if resume is None:  # a new start in this directory (overwrite=true, or no checkpoint was complete)
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
            (path / "metrics.jsonl").unlink(missing_ok=True)
            (path / WANDB_ID_FILE).unlink(missing_ok=True)  # a new start is a new wandb run
            for derived in (*DERIVED, "merged.partial"):  # made from the adapter this start replaces
                shutil.rmtree(path / derived, ignore_errors=True)
        else:
            trim_metrics(path / "metrics.jsonl", step_of(Path(resume)))
    dist.wait_for_everyone()


def trim_metrics(metrics: Path, step: int | None) -> None:
    """Keep the rows up to the resumed step; a line cut off by the kill is dropped too."""
    if step is None or not metrics.is_file():
        return
    keep = [line for line in metrics.read_text().splitlines() if row_step(line) is not None and row_step(line) <= step]
    files.write_text(metrics, "".join(line + "\n" for line in keep))


def row_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
