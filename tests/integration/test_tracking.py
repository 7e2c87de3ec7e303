"""tracking=wandb through the real entry point: an offline run holds the resolved config and the loss, a missing
API key means offline with one notice, and a resumed run continues the same wandb run."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import FAST, run_entry
from finetune.runs import metrics

pytestmark = pytest.mark.slow


def wandb_records(path: Path):
    """The protobuf Records in a .wandb file: wandb's LevelDB-style log (32 KiB blocks, 7-byte chunk headers).
    wandb 0.31 ships no Python reader for it, and an offline run keeps its config and history only there."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a chunk header never straddles a block: the rest of the block is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_run(path: Path) -> dict:
    """name, project, tags, group, config (every update merged) and history rows of an offline wandb run."""
    run: dict = {"config": {}, "history": []}
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(id=r.run_id, name=r.display_name, project=r.project, tags=list(r.tags), group=r.run_group)
            run["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return run


def test_offline_wandb_run_holds_config_and_loss_and_resumes_the_same_run(tmp_path):
    run = tmp_path / "tiny-wandb"
    # Online mode asked for, but no API key anywhere: the run must go on offline, saying so once. The unreachable
    # base URL makes any attempt to go online fail instead of reaching the network.
    no_key = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "",
        "NETRC": str(tmp_path / "no-netrc"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",
    }
    proc = run_entry(
        "train.py",
        "recipe=tiny_lora",
        f"output_dir={run}",
        "tracking=wandb",
        "tracking.project=llama2-ft",
        "tracking.tags=[tiny,ci]",
        "tracking.group=tests",
        *FAST,
        env=no_key,
    )
    notices = [line for line in proc.stdout.splitlines() if line.startswith("wandb: no API key")]
    assert len(notices) == 1 and f"wandb sync {run / 'wandb'}/offline-run-*" in notices[0], proc.stdout[-2000:]

    run_id = (run / "wandb_run_id").read_text().strip()
    [first] = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    logged = read_run(first)
    assert (logged["id"], logged["name"], logged["project"]) == (run_id, "tiny-wandb", "llama2-ft")
    assert (logged["tags"], logged["group"]) == (["tiny", "ci"], "tests")
    # the resolved config with the dotted keys a sweep file uses, overrides applied
    cfg = logged["config"]
    assert cfg["lora.r"] == 8 and cfg["trainer.max_steps"] == 4 and cfg["data.max_samples"] == 16
    assert cfg["trainer.learning_rate"] == pytest.approx(2e-3) and cfg["tracking.backend"] == "wandb"
    assert cfg["init_adapter"] is None and cfg["model.name"] == "llama2_tiny"
    # the loss wandb holds is the loss the run wrote to metrics.jsonl, step for step
    rows = metrics.read(run / "metrics.jsonl")
    expected = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    got = [(h["train/global_step"], h["train/loss"]) for h in logged["history"] if "train/loss" in h]
    assert len(expected) == 4 and got == [(s, pytest.approx(v)) for s, v in expected]
    assert [h["eval/loss"] for h in logged["history"] if "eval/loss" in h] == [
        pytest.approx(r["eval_loss"]) for r in rows if "eval_loss" in r
    ]
    # what metrics.jsonl derives reaches the tracker too (issue 21: TensorBoard/wandb lacked them)
    assert (
        [h["eval/perplexity"] for h in logged["history"] if "eval/perplexity" in h]
        == [pytest.approx(r["eval_perplexity"]) for r in rows if "eval_perplexity" in r]
        != []
    )
    assert (
        [h["train/tokens_per_s"] for h in logged["history"] if "train/tokens_per_s" in h]
        == [pytest.approx(r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
        != []
    )

    # Killed after its last checkpoint (no adapter yet), then resumed for 2 more steps: same wandb run.
    shutil.rmtree(run / "adapter")
    longer = [o for o in FAST if not o.startswith("trainer.max_steps=")] + ["trainer.max_steps=6"]
    proc = run_entry(
        "train.py",
        "recipe=tiny_lora",
        f"output_dir={run}",
        "tracking=wandb",
        "tracking.project=llama2-ft",
        *longer,
        env={"WANDB_MODE": "offline"},
    )
    assert "wandb: no API key" not in proc.stdout  # WANDB_MODE=offline is honoured without a notice
    assert (run / "wandb_run_id").read_text().strip() == run_id
    runs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2 and len(list((run / "wandb").glob("offline-run-*"))) == 2
    resumed = read_run(runs[-1] if runs[-1] != first else runs[0])
    assert resumed["id"] == run_id
    assert [h["train/global_step"] for h in resumed["history"] if "train/loss" in h] == [5, 6]
