"""The headline command on the tiny model: `accelerate launch finetune/train.py recipe=tiny_{lora,qlora}`."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import compose, run_entry
from finetune import config
from finetune.data import load as data_load
from finetune.model import base as model_base
from finetune.model import tokenizer as tokenizer_mod

# Two examples, seen again and again: the loss must fall. Eval on two held-out examples at steps 4 and 8.
REPEATED = ["data.max_samples=4", "data.eval_fraction=0.5", "data.max_length=192", "data.too_long=truncate",
            "trainer.max_steps=8", "trainer.micro_batch_size=2", "trainer.logging_steps=1", "trainer.save_steps=4",
            "trainer.learning_rate=1e-2", "trainer.warmup_ratio=0"]


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

    # the run directory a user relies on
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "adapter/adapter_model.safetensors",
                 "adapter/adapter_config.json", "adapter/tokenizer.model", "adapter/LICENSE-LLAMA2",
                 "checkpoints/checkpoint-4/trainer_state.json", "checkpoints/checkpoint-8/optimizer.pt"):
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
