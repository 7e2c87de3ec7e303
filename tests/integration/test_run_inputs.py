"""<run>/inputs.json: a finished run exports and chats after its data file is gone, from what training recorded;
export never writes into the run's config; a run without the file (an older version's) still exports."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from omegaconf import OmegaConf

from tests.conftest import run_entry
from finetune.runs import inputs, rundir

pytestmark = pytest.mark.slow


def copy_run(run, tmp_path):
    dst = tmp_path / run.name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "merged", "gguf"))
    return dst


def test_training_records_held_out_examples_and_the_resolved_base(tiny_lora_run):
    record = inputs.read(tiny_lora_run)
    cfg = rundir.run_config(tiny_lora_run)
    assert record is not None and record.data == cfg.data.path
    adapter = json.loads((tiny_lora_run / "adapter" / "adapter_config.json").read_text())
    assert record.base_path == adapter["base_model_name_or_path"]  # absolute, as training loaded it
    # FAST keeps 16 examples, a quarter held out: those 4 come first, then the training ones
    assert len(record.examples) == 16 and all("messages" in ex for ex in record.examples)


def test_export_and_chat_without_the_data_file(tiny_lora_run, tmp_path):
    run = copy_run(tiny_lora_run, tmp_path)
    conf = OmegaConf.load(run / "config.yaml")
    conf.data.path = str(tmp_path / "moved-away.jsonl")  # the data file the run trained on is gone
    OmegaConf.save(conf, run / "config.yaml")
    proc = run_entry(
        "export.py",
        f"run={run}",
        "merge=true",
        "format=gguf",
        "gguf.type=q8_0",
        "verify.prompts=2",
        "verify.max_new_tokens=4",
        "gguf.sequences=2",
    )
    assert "verified vs the adapter model as trained" in proc.stdout and "again" not in proc.stdout
    trained_on = inputs.read(run).data  # where the data was when the run trained
    source = f"the run's data ({trained_on}, as recorded in {run.name}/inputs.json)"
    assert json.loads((run / "merged" / "verification.json").read_text())["prompt_source"] == source
    [gguf_check] = json.loads((run / "gguf" / "verification.json").read_text())["files"].values()
    assert gguf_check["prompt_source"] == gguf_check["perplexity_source"] == source
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Name a colour."}]}) + "\n")
    run_entry(
        "chat.py", f"run={run}", f"prompts={prompts}", f"out={tmp_path / 'answers.jsonl'}", "generate.max_new_tokens=4"
    )
    [answer] = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert answer["new_tokens"] >= 1


def test_older_run_rereads_its_data_and_export_leaves_the_config_as_read(tiny_lora_run, tmp_path, capsys):
    from finetune import export

    run = copy_run(tiny_lora_run, tmp_path)
    (run / inputs.FILE).unlink()  # as a run trained before inputs.json existed
    train_cfg = rundir.run_config(run)
    before = copy.deepcopy(train_cfg)
    cfg = export.ExportConfig(run=str(run), merge=True, verify=export.VerifyConfig(prompts=2, max_new_tokens=4))
    export.merge_and_verify(cfg, train_cfg, run)
    assert (
        f"{run.name} has no readable inputs.json (trained by an older version?): reading its data "
        f"{train_cfg.data.path} again for the verification prompts" in capsys.readouterr().out
    )
    checks = json.loads((run / "merged" / "verification.json").read_text())
    assert checks["prompt_source"] == f"the run's data ({train_cfg.data.path})"
    assert train_cfg == before  # the tokenizer, the base path: resolved values are returned, never written back
