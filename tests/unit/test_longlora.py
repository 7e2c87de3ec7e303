"""LongLoRA's trainable input embeddings and norms (`lora.train_embeddings_and_norms`), on the tiny Llama 2 in
process: every trainable tensor moves (LoRA and the full copies), the adapter holds the trained embeddings and
norms, stock peft reloads it as trained, and our streaming merge reproduces it within the float32 tolerance
export.py verifies with (16-bit LoRA and QLoRA)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import compose
from finetune import config
from finetune.model import base as model_base
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.ship import merge, verify

TOLERANCE = verify.default_tolerance(torch.float32, torch.float32)


@pytest.fixture(scope="module")
def tiny():
    cfg = config.load(compose("recipe=tiny_lora", "lora.dropout=0.0", "lora.train_embeddings_and_norms=true"))
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    return cfg


def logits(net, ids) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(input_ids=ids).logits.float()


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "nf4"])
def test_embeddings_and_norms_train_save_reload_and_merge_exactly(mode, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = tiny
    qcfg = dataclasses.replace(cfg.quant, mode=mode)
    torch.manual_seed(0)
    net = lora.apply_lora(model_base.load_base(cfg.model, qcfg), dataclasses.replace(cfg.lora, r=4, alpha=8))
    trainable = {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}
    full = [k for k in trainable if "lora_" not in k]
    layers = cfg.model.arch.num_layers
    assert sum("embed_tokens" in k for k in full) == 1 and sum("norm" in k for k in full) == 2 * layers + 1, full
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 32000, (2, 24), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        net.train()
        net(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    unmoved = [k for k, v in net.named_parameters() if v.requires_grad and torch.equal(trainable[k], v)]
    assert unmoved == []
    trained = logits(net, ids)

    adapter = tmp_path / "adapter"
    net.save_pretrained(str(adapter))
    assert json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"] == ["embed_tokens", "norm"]
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys() if "lora_" not in k}
    embed = net.get_base_model().model.embed_tokens.modules_to_save["default"].weight
    assert torch.equal(saved["base_model.model.model.embed_tokens.weight"], embed.detach())
    assert len(saved) == 2 * layers + 2

    reloaded = PeftModel.from_pretrained(model_base.load_base(cfg.model, qcfg), str(adapter))  # stock peft
    assert relative(logits(reloaded, ids), trained) < TOLERANCE

    quant = merge.Quant(mode, cfg.quant.double_quant, torch.float32) if mode == "nf4" else None
    stats = merge.merge(Path(cfg.model.path), merge.read_adapter(adapter), tmp_path / "merged", quant)
    assert stats.replaced == 2 * layers + 2
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert torch.equal(merged.model.embed_tokens.weight, embed.detach().float())  # copied, not approximated
    drift = relative(logits(merged, ids), trained)
    print(f"LongLoRA {mode}: merged vs trained, max |dlogits| / max |logits| = {drift:.2e}")
    assert drift < TOLERANCE


def test_an_adapter_missing_its_saved_modules_is_refused(tiny, tmp_path):
    net = lora.apply_lora(
        model_base.load_base(tiny.model, dataclasses.replace(tiny.quant, mode="none")),
        dataclasses.replace(tiny.lora, train_embeddings_and_norms=False),
    )
    net.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "modules_to_save": ["embed_tokens", "norm"]}))
    with pytest.raises(merge.MergeError, match="lists modules_to_save=.* holds none of their weights"):
        merge.read_adapter(tmp_path)
