"""export.py on the tiny trained runs: merged folders that reproduce the adapter model, loaded the stock way."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

from tests.conftest import run_entry
from finetune.runs import rundir

pytestmark = pytest.mark.slow
LICENCE = ("LICENSE-LLAMA2", "NOTICE", "USE_POLICY.md")


def copy_run(run, tmp_path):
    """The fixture run without its checkpoints, so exports here never touch the shared fixture."""
    dst = tmp_path / run.name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def checks(run):
    return json.loads((run / "merged" / "verification.json").read_text())["checks"]


def test_training_ends_with_a_real_adapter_card(tiny_sft_run):
    card = ModelCard.load(tiny_sft_run / "adapter" / "README.md")  # written by checkpoints.save, not peft's template
    assert card.data.library_name == "peft" and card.data.license == "llama2" and "qlora" in card.data.tags
    assert "| final train loss |" in card.text and "## How to load" in card.text
    assert "tokenize=True)` gives exactly" in card.text  # how each stack reproduces the trained ids
    assert not [p.name for p in (tiny_sft_run / "adapter").iterdir() if p.suffix in (".bin", ".pt", ".pkl")]


def test_qlora_merge_reproduces_the_adapter_model(tiny_sft_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run = copy_run(tiny_sft_run, tmp_path)
    (run / "merged.old").mkdir()  # what an export stopped between its two renames leaves
    (run / "merged.old" / "config.json").write_text("{}")
    proc = run_entry("export.py", f"run={run}", "merge=true", "verify.prompts=2", "verify.max_new_tokens=8")
    assert "verified vs the adapter model as trained: max |dlogits|" in proc.stdout
    assert not (run / "merged.old").exists()
    merged = run / "merged"
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards and all((merged / s).is_file() for s in shards)
    for name in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json", *LICENCE):
        assert (merged / name).is_file(), name
    assert not (run / "merged.partial").exists()
    [check] = checks(run)  # the 4-bit adapter model vs the merged model (measured: 3.6e-7)
    assert check["max_abs"] < 1e-5 and check["same_generations"] == check["prompts"] == 2
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "llama2"
    assert "`merge_base=dequantized`" in card.text and f"| {check['max_abs']:.2e} |" in card.text
    assert ModelCard.load(run / "adapter" / "README.md").data.library_name == "peft"
    assert "## Serving" in card.text and "vllm serve" in card.text
    assert not [p.name for p in merged.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]  # safetensors only
    model = AutoModelForCausalLM.from_pretrained(merged)  # stock loading, no peft, no bitsandbytes
    assert model.config.model_type == "llama" and not hasattr(model.config, "quantization_config")


def export_in_process(run, **kw):
    """The export pipeline without a new interpreter (transformers is already imported here)."""
    from finetune import export

    cfg = export.ExportConfig(run=str(run), merge=True, verify=export.VerifyConfig(**kw.pop("verify", {})), **kw)
    return export.merge_and_verify(cfg, rundir.run_config(run), run)


def test_original_base_reports_drift_from_the_trained_model(tiny_sft_run, tmp_path):
    run = copy_run(tiny_sft_run, tmp_path)
    export_in_process(run, merge_base="original", verify={"prompts": 2, "max_new_tokens": 4})
    arithmetic, as_trained = checks(run)
    assert arithmetic["reference"] == "the adapter on the original 16-bit base" and arithmetic["max_abs"] < 1e-5
    # merging into weights the adapter never saw: the quantization error shows (measured: 9.5e-2)
    assert as_trained["reference"] == "the adapter model as trained" and as_trained["max_abs"] > 1e-3
    text = (run / "merged" / "README.md").read_text()
    assert "`merge_base=original`" in text and "(reported only)" in text


def test_lora_merge_in_bfloat16_loads_like_the_adapter(tiny_lora_run, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    run = copy_run(tiny_lora_run, tmp_path)
    run_entry("export.py", f"run={run}", "merge=true", "dtype=bfloat16", "verify.prompts=2", "verify.max_new_tokens=4")
    [check] = checks(run)
    assert check["tolerance"] == 5e-2 and check["max_abs"] / check["logit_scale"] < 5e-2
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype="auto")
    assert merged.dtype == torch.bfloat16
    adapter = AutoPeftModelForCausalLM.from_pretrained(run / "adapter")  # stock peft, base from adapter_config
    ids = torch.tensor([[1, 518, 25580, 29962, 15043, 518, 29914, 25580, 29962]])
    with torch.no_grad():
        diff = (adapter(input_ids=ids).logits - merged.float()(input_ids=ids).logits).abs().max()
    assert diff < 0.05 * adapter(input_ids=ids).logits.abs().max()


def test_failed_verification_leaves_no_merged_folder(tiny_lora_run, tmp_path):
    from finetune.ship.merge import MergeError

    run = copy_run(tiny_lora_run, tmp_path)
    with pytest.raises(
        MergeError,
        match=r"merged model failed verification on 1 prompts from the run's data .*"
        r"max \|dlogits\| .*pass verify.tolerance=",
    ):
        export_in_process(run, verify={"tolerance": 1e-12, "prompts": 1, "max_new_tokens": 1})
    assert not (run / "merged").exists() and not (run / "merged.partial").exists()


def test_not_a_run(tmp_path):
    proc = run_entry("export.py", f"run={tmp_path}", check=False)
    assert proc.returncode == 2
    assert "no adapter/adapter_config.json there; point run= at a finished training run" in proc.stderr


@pytest.mark.parametrize(
    "value,problem",
    [
        ("[]", "gguf.type=[]: give at least one type, e.g. gguf.type=q8_0 or gguf.type=[f16,q4_k_m] (one of {types})"),
        (
            "[q8_0,q9_k]",
            "gguf.type=q9_k: use one or more of {types} (the IQ, TQ and MXFP4 types are not offered: see the README)",
        ),
    ],
)
def test_no_or_unknown_gguf_types_are_one_error_before_anything_is_written(tiny_sft_run, tmp_path, value, problem):
    from finetune.ship import gguf

    run = tmp_path / "run"
    shutil.copytree(tiny_sft_run / "adapter", run / "adapter")
    shutil.copy(tiny_sft_run / "config.yaml", run / "config.yaml")
    card = (run / "adapter" / "README.md").read_bytes()
    proc = run_entry("export.py", f"run={run}", "format=gguf", f"gguf.type={value}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == ["error: invalid config:", "  - " + problem.format(types=", ".join(gguf.TYPES))]
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "config.yaml"]  # no gguf/, no merged/
    assert (run / "adapter" / "README.md").read_bytes() == card
