"""Publish a run: `python finetune/publish.py run=outputs/<run> repo_id=me/name [what=merged|gguf] [private=true]`.

`dry_run=true` prints what would be uploaded, and whether the repository will be public, and sends nothing.
The work is in finetune/ship/hub.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from finetune import config
from finetune.runtime import console


@dataclass
class PublishConfig:
    run: str = MISSING
    repo_id: str = MISSING
    what: str = "adapter"
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    dry_run: bool = False


config.register()
ConfigStore.instance().store(name="publish_schema", node=PublishConfig)


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="publish")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.runs import damage, lock, rundir
    from finetune.ship import hub

    cfg: PublishConfig = config.schema_object(dict_cfg)
    if cfg.what not in ("adapter", "merged", "gguf"):
        raise config.ConfigError([f"what={cfg.what}: use adapter, merged or gguf"])
    folder = Path(cfg.run).expanduser().resolve() / cfg.what
    if outside := rundir.inside_run(folder.parent):
        raise config.ConfigError([outside])
    if not folder.is_dir():
        fix = {
            "merged": "python finetune/export.py run=<run> merge=true",
            "gguf": "python finetune/export.py run=<run> format=gguf",
        }.get(cfg.what, "finish training first")
        raise hub.PublishError(f"{folder}: no such folder; {fix}")
    lock.share(folder.parent, "publish.py")  # a training job does not replace the adapter while it is read
    if cfg.what in rundir.DERIVED:  # an export does not replace merged/ or gguf/ under the upload
        lock.derived(folder.parent, "publish.py", write=False)
    if damaged := damage.adapter_problems(folder.parent):  # a cut or missing file is never published
        raise hub.PublishError(damaged[0])
    if cfg.what in rundir.DERIVED and (stale := rundir.derived_problem(folder.parent, cfg.what)):
        raise hub.PublishError(stale)  # never published as this run's when made from another adapter

    # What goes out, and whether any of it looks like a secret (checked before any network call)
    token = hub.token_or_none()  # a leaked token is named first, whatever file holds it
    if leaks := hub.token_findings(folder, token):
        raise hub.PublishError(
            f"{folder} holds token-like strings, refusing to publish: {'; '.join(leaks)}. "
            "Remove them (and revoke the token if it was real)"
        )
    plan = hub.plan(folder, cfg.repo_id, cfg.private, cfg.revision, cfg.commit_message)
    console.info(plan.describe())
    if cfg.dry_run:
        found = "a token is set" if token else "no token found: set HF_TOKEN or run `hf auth login` before publishing"
        console.info(f"dry run: nothing sent ({found})")
        return
    if not token:
        raise hub.PublishError(
            "no Hugging Face token: set HF_TOKEN=<a write token> or run `hf auth login` "
            "(the token is never written to the run or the repo)"
        )

    # One commit to the Hub
    url = hub.publish(plan, token)
    console.info(f"published: {url}")


if __name__ == "__main__":
    main()
