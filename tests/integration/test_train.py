"""The headline command on the tiny model: `accelerate launch finetune/train.py recipe=tiny_{lora,qlora}`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, ROOT, compose, run_entry
from finetune import config, demo
from finetune.data import load as data_load
from finetune.model import base as model_base
from finetune.model import tokenizer as tokenizer_mod

# Two examples, seen again and again: the loss must fall. Eval on two held-out examples at steps 4 and 8.
REPEATED = [
    "data.max_samples=4",
    "data.eval_fraction=0.5",
    "data.max_length=192",
    "data.too_long=truncate",
    "trainer.max_steps=8",
    "trainer.micro_batch_size=2",
    "trainer.logging_steps=1",
    "trainer.save_steps=4",
    "trainer.learning_rate=1e-2",
    "trainer.warmup_ratio=0",
]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stock_eval_loss(run_dir, recipe):
    """Reload the saved adapter with stock peft (AutoPeftModelForCausalLM) and compute the eval loss."""
    from peft import AutoPeftModelForCausalLM

    cfg = config.load(compose(f"recipe={recipe}", f"output_dir={run_dir}", "overwrite=true", *REPEATED))
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    eval_ds = data_load.load(cfg.data, tok).eval
    kwargs = {"dtype": torch.float32}
    if cfg.quant.mode != "none":
        kwargs.update(quantization_config=model_base.bnb_config(cfg.quant, torch.float32), device_map="cpu")
    peft_model = AutoPeftModelForCausalLM.from_pretrained(run_dir / "adapter", **kwargs)
    if cfg.quant.mode != "none":
        model_base.disable_cpu_weight_repacking(peft_model)
    peft_model.eval()
    ids = [torch.tensor(x) for x in eval_ds["input_ids"]]
    masks = [torch.tensor(m) for m in eval_ds["assistant_masks"]]
    width = max(len(x) for x in ids)
    input_ids = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=tok.pad_id) for x in ids])
    attn = torch.stack([torch.nn.functional.pad(torch.ones_like(x), (0, width - len(x))) for x in ids])
    trained = torch.stack([torch.nn.functional.pad(m, (0, width - len(m))) for m in masks])
    labels = input_ids.masked_fill(trained == 0, -100)
    with torch.no_grad():
        return peft_model(input_ids=input_ids, attention_mask=attn, labels=labels).loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["tiny_lora", "tiny_qlora"])
def test_accelerate_launch_trains_saves_and_reloads(recipe, tmp_path):
    run_dir = tmp_path / recipe
    proc = run_entry("train.py", f"recipe={recipe}", f"output_dir={run_dir}", *REPEATED, launcher="accelerate")
    assert f"adapter: {run_dir / 'adapter'}" in proc.stdout
    assert f"next: try it:       python {ROOT / 'finetune' / 'chat.py'} run={run_dir}\n" in proc.stdout  # as launched

    # the run directory a user relies on
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.model",
        "adapter/LICENSE-LLAMA2",
        "checkpoints/checkpoint-4/trainer_state.json",
        "checkpoints/checkpoint-8/optimizer.pt",
    ):
        assert (run_dir / name).is_file(), name

    # the loss went down on the repeated batch
    losses = [r["loss"] for r in rows(run_dir) if "loss" in r]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.25 and losses[-1] < min(losses[:4]), losses

    # every LoRA parameter changed between the first checkpoint and the end
    first = load_file(run_dir / "checkpoints/checkpoint-4/adapter_model.safetensors")
    final = load_file(run_dir / "adapter/adapter_model.safetensors")
    assert first.keys() == final.keys() and len(final) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    unchanged = [k for k in final if torch.equal(first[k], final[k])]
    assert not unchanged, unchanged

    # stock peft reloads the adapter and reproduces the eval loss the trainer logged at the last step
    logged = [r["eval_loss"] for r in rows(run_dir) if "eval_loss" in r]
    assert len(logged) == 2
    assert stock_eval_loss(run_dir, recipe) == pytest.approx(logged[-1], abs=2e-4)


def on_a_small_disk(size: str, script: str, tmp_path) -> subprocess.CompletedProcess:
    """`script` (sh) run in a mount namespace of its own with $DISK a `size` tmpfs (gone with the namespace, even
    if the test is killed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs -o size={size} tmpfs {disk} && {script}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DISK": str(disk)},
    )


TRAIN = f"{sys.executable} finetune/train.py recipe=tiny_qlora {' '.join(FAST)}"
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="mounting a small tmpfs for output_dir needs root and unshare(1)",
)


@pytest.mark.slow
@ROOT_ONLY
def test_a_disk_without_room_for_the_checkpoints_is_refused_at_start(tmp_path):
    proc = on_a_small_disk("2m", f"{TRAIN} output_dir=$DISK/run", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: output_dir={tmp_path}/disk/run: 2.0 MiB free on its disk, and this run needs ~12.4 MiB: 2 checkpoints "
        "on disk at once of ~4.0 MiB each (trainer.save_total_limit=2 kept, plus the one being written) and the "
        "adapter (~4.3 MiB); free space, lower trainer.save_total_limit, or give output_dir= on a bigger disk"
    ]


@pytest.mark.slow
@ROOT_ONLY
def test_a_disk_that_fills_up_during_training_is_one_line_and_no_traceback(tmp_path):
    """The start check passes (24 MB); once the first step is logged, another writer fills the disk: the next
    write (a metrics line or checkpoint-2) fails. safetensors and torch raise their own types for it."""
    script = (
        f"{TRAIN} output_dir=$DISK/run & pid=$!; "
        "while [ ! -s $DISK/run/metrics.jsonl ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done; "
        "dd if=/dev/zero of=$DISK/filler bs=64k 2>/dev/null; wait $pid; rc=$?; "
        "find $DISK/run -path '*checkpoint*' >&2; exit $rc"
    )
    proc = on_a_small_disk("24m", script, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path}/disk/run"), proc.stderr[-3000:]
    assert ": no space left on the disk (" in errors[0] and "this run needs ~12.4 MiB: 2 checkpoints" in errors[0]
    assert errors[0].endswith(
        f"no complete checkpoint yet; start over: python finetune/train.py recipe=tiny_qlora "
        f"{' '.join(FAST)} output_dir={tmp_path}/disk/run"
    )
    assert ".incomplete/checkpoint-" not in proc.stderr  # the half-written checkpoint was removed


def test_a_tiny_model_cache_without_config_or_weights_is_rebuilt(tmp_path):
    """A random-weight cache is ready when the files a load reads are there, not when its stamp is: a folder built
    under FSDP held the tokenizer and random_init.json only, and every later run failed in transformers."""
    from pathlib import Path

    from transformers import AutoConfig

    over = ("recipe=tiny_qlora", f"model.path={tmp_path / 'tiny'}")
    cfg = config.load(compose(*over))
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    model_base.prepare_path(cfg.model, tok)
    folder = Path(cfg.model.path)
    (folder / "config.json").unlink()
    (folder / "model.safetensors").unlink()
    assert (folder / "random_init.json").is_file() and (folder / "tokenizer.model").is_file()
    again = config.load(compose(*over))
    model_base.prepare_path(again.model, tok)
    assert again.model.path == str(folder) and (folder / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(folder).model_type == "llama"


def test_what_this_machine_cannot_train_is_one_line_before_anything_else(monkeypatch):
    """No CUDA here: a GPU-sized recipe names the CPU recipe of its method, FSDP names multi_gpu.yaml; each alone,
    before the other checks (a 13B recipe on a laptop has nothing else worth saying)."""
    from finetune.config import ConfigError, UserError
    from finetune.training import checks

    for recipe, tiny in (
        ("qlora_13b", "tiny_qlora"),
        ("lora_7b", "tiny_lora"),
        ("dpo_qlora_70b", "tiny_dpo"),
        ("kto_qlora_7b", "tiny_kto"),
    ):
        with pytest.raises(UserError) as err:
            checks.before_weights(compose(f"recipe={recipe}", "trainer.optim=adam"), recipe, training=True)
        assert (
            not isinstance(err.value, ConfigError)
            and str(err.value).startswith(f"recipe={recipe} is sized for a GPU (")
            and f"; on this machine try recipe={tiny} (" in str(err.value)
        )
    checks.before_weights(compose("recipe=qlora_13b"))  # preview.py tokenizes a GPU recipe's data on a CPU: fine
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError) as err:
        checks.before_weights(compose("recipe=tiny_qlora"), "tiny_qlora", training=True)
    assert str(err.value) == (
        "FSDP (launch/accelerate/fsdp_qlora.yaml) shards the model across GPUs and this machine has none; on CPUs "
        "launch data-parallel processes with --config_file launch/accelerate/multi_gpu.yaml, or one process with "
        "python finetune/train.py"
    )


GPU_LINE = (
    "error: recipe=qlora_13b is sized for a GPU (llama2_13b, 13.0B parameters) and this machine has no CUDA "
    "GPU; on this machine try recipe=tiny_qlora (the same method on a toy Llama 2), or see which GPU it needs: "
    "python finetune/plan.py recipe=qlora_13b"
)


@pytest.mark.slow
def test_gpu_launches_on_this_cpu_machine_end_in_one_line_through_the_real_launcher(tmp_path):
    """`accelerate launch -q finetune/train.py recipe=qlora_13b`: our line and accelerate's quiet exit (1), no
    traceback. FSDP on 2 ranks: the line once (rank 0), before any rank tokenizes; torch's elastic launcher then
    adds its own failure report (launch/README.md shows it)."""
    env = {**os.environ, "FINETUNE_CACHE": str(tmp_path / "cache")}
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    one = subprocess.run(
        [sys.executable, *demo.ONE_PROCESS, "-q", "finetune/train.py", "recipe=qlora_13b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 1 and "Traceback" not in one.stderr + one.stdout, one.stderr[-3000:]
    assert [line for line in one.stderr.splitlines() if line.startswith("error:")] == [GPU_LINE]
    fsdp = subprocess.run(
        [
            *launch,
            "--config_file",
            "launch/accelerate/fsdp_qlora.yaml",
            "--num_processes",
            "2",
            "--main_process_port",
            "0",
            "finetune/train.py",
            "recipe=tiny_qlora",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert fsdp.returncode != 0
    assert [line for line in fsdp.stderr.splitlines() if line.startswith("error:")] == [
        "error: FSDP (launch/accelerate/fsdp_qlora.yaml) shards the model across GPUs and this machine has none; on "
        "CPUs launch data-parallel processes with --config_file launch/accelerate/multi_gpu.yaml, or one process "
        "with python finetune/train.py"
    ], fsdp.stderr[-3000:]
    assert not (tmp_path / "cache").exists()  # nothing tokenized, no model built
