"""<run>/inputs.json: what the later stages need from the training inputs, written by rank 0 when the run starts,
so export (its verification prompts and perplexity sequences), chat and evaluate never re-read the raw data:
the first examples of the data (held-out ones first, as the data build kept them) and the base model as
training resolved it (absolute local folder, or Hub id and revision).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from finetune.runtime import dist, files

FILE = "inputs.json"
KEEP = 64  # examples kept: enough for verify.prompts and gguf.sequences after too-long ones are skipped


@dataclass(frozen=True)
class Inputs:
    examples: list  # held-out examples first, then training ones (the data build's head)
    data: str  # data.path they came from
    base_path: str  # the resolved base: an absolute folder or a Hub id
    base_revision: str | None

    def source(self, run: Path) -> str:
        """Where the examples come from, for logs, errors and verification.json."""
        return f"the run's data ({self.data}, as recorded in {Path(run).name}/{FILE})"


def write(run_dir: Path, head: list, cfg) -> None:
    """Rank 0 writes <run>/inputs.json (aside, then renamed: a reader never sees half of it)."""
    if not dist.is_main():
        return
    record = Inputs(
        examples=list(head[:KEEP]),
        data=str(cfg.data.path),
        base_path=str(cfg.model.path),
        base_revision=cfg.model.revision,
    )
    files.write_text(Path(run_dir) / FILE, json.dumps(asdict(record), ensure_ascii=False, indent=1) + "\n")


def read(run_dir: Path) -> Inputs | None:
    """The run's record, or None for a run trained before it was written (or a damaged file)."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text())
        return Inputs(**{k: data[k] for k in ("examples", "data", "base_path", "base_revision")})
    except (OSError, ValueError, KeyError, TypeError):
        return None
