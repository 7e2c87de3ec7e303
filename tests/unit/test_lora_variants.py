"""LoRA variants on the tiny Llama 2, in process: every variant trains (each LoRA tensor moves), saves as stock peft
reloads it on the original base, and merges into safetensors that reproduce the trained model within the float32
tolerance the export verifies with. PiSSA/OLoRA train on a changed base and are checked after the conversion at
save; LoftQ leaves the 4-bit base as it is and starts closer to the full-precision model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.conftest import compose
from finetune import config
from finetune.model import base as model_base
from finetune.model import lora, variants
from finetune.model import tokenizer as tokenizer_mod
from finetune.runs import checkpoints
from finetune.ship import merge, verify

TOLERANCE = verify.default_tolerance(torch.float32, torch.float32)  # what export.py checks a float32 merge with
VARIANTS = {  # name -> (lora.* overrides, quant.mode)
    "dora": ({"use_dora": True}, "none"),
    "qdora": ({"use_dora": True}, "nf4"),
    "rslora": ({"use_rslora": True}, "none"),
    "gaussian": ({"init": "gaussian"}, "none"),
    "pissa": ({"init": "pissa", "use_rslora": True}, "none"),
    "olora": ({"init": "olora"}, "none"),
    "loftq": ({"init": "loftq"}, "nf4"),
}


@pytest.fixture(scope="module")
def tiny():
    """(train config, base folder) of the tiny random Llama 2, written once."""
    cfg = config.load(compose("recipe=tiny_lora", "lora.dropout=0.0"))
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    return cfg, cfg.model.path


def load(cfg, mode: str):
    return model_base.load_base(cfg.model, dataclasses.replace(cfg.quant, mode=mode))


def batch() -> torch.Tensor:
    return torch.randint(3, 32000, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(net, ids) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(input_ids=ids).logits.float()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_saves_and_merges_exactly(name, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, base_dir = tiny
    overrides, mode = VARIANTS[name]
    lcfg = dataclasses.replace(cfg.lora, r=4, alpha=8, **overrides)
    torch.manual_seed(0)
    net = lora.apply_lora(load(cfg, mode), lcfg, mcfg=cfg.model)
    if lcfg.init in variants.CONVERTED:
        variants.save_initial(net, tmp_path / "lora_init", main=True)
    start = {k: v.detach().clone() for k, v in net.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    ids = batch()
    for _ in range(3):
        net.train()
        net(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {k: not torch.equal(start[k], v) for k, v in net.named_parameters() if v.requires_grad}
    assert all(moved.values()), [k for k, m in moved.items() if not m]
    assert any("lora_magnitude_vector" in k for k in moved) == lcfg.use_dora
    trained = logits(net, ids)

    adapter = tmp_path / "adapter"
    net.save_pretrained(str(adapter))
    converted = checkpoints.convert(net, adapter, tmp_path / "lora_init")
    assert converted == (lcfg.init in variants.CONVERTED) and not (tmp_path / "lora_init").exists()
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["r"] == (8 if converted else 4) and saved["init_lora_weights"] in (True, "gaussian")

    # stock peft on the original base (PiSSA/OLoRA: the converted adapter) is the trained model
    reloaded = PeftModel.from_pretrained(load(cfg, mode), str(adapter))
    assert relative(logits(reloaded, ids), trained) < TOLERANCE

    quant = merge.Quant(mode, cfg.quant.double_quant, torch.float32) if mode == "nf4" else None
    merge.merge(model_base.Path(base_dir), merge.read_adapter(adapter), tmp_path / "merged", quant)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    drift = relative(logits(merged, ids), trained)
    print(f"{name}: merged vs trained, max |dlogits| / max |logits| = {drift:.2e}")
    assert drift < TOLERANCE


def test_loftq_starts_closer_to_the_full_precision_model(tiny):
    """The point of LoftQ: the 4-bit base + its initial LoRA is nearer the 16-bit model than the 4-bit base alone."""
    cfg, _ = tiny
    ids = batch()
    full = logits(load(cfg, "none"), ids)
    plain = logits(load(cfg, "nf4"), ids)
    loftq = lora.apply_lora(load(cfg, "nf4"), dataclasses.replace(cfg.lora, r=8, init="loftq"), mcfg=cfg.model)
    started = logits(loftq, ids)
    assert (started - full).norm() < 0.8 * (plain - full).norm()


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_pissa_base_survives_the_reference_adapter_trl_adds(kind, tiny, tmp_path):
    """TRL copies the starting adapter into a frozen "ref" adapter built from the same config; were that config
    still PiSSA's, peft would decompose the (already residual) base a second time and the policy would change."""
    from finetune.data import load as data_load
    from finetune.training import kinds

    cfg = config.load(
        compose(
            f"recipe=tiny_{kind}",
            "quant=none",
            "lora.init=pissa",
            "data.max_samples=8",
            "data.eval_fraction=0",
            "eval.samples=0",
        )
    )
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    model_base.prepare_path(cfg.model, tok)
    net = lora.apply_lora(load(cfg, "none"), cfg.lora, mcfg=cfg.model)
    ids = batch()
    start = logits(net, ids)
    kinds.build(cfg, net, tok, data_load.load(cfg.data, tok, kind), tmp_path)
    assert "ref" in net.peft_config and torch.equal(logits(net, ids), start)
