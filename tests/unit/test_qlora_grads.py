"""QLoRA gradients through our 4-bit loading path equal those of a float32 model holding the dequantized
weights, even after an eval/no-grad forward (what Trainer.evaluate and generate do). Without the
bitsandbytes AVX512-BF16 workaround in model.load_base, this fails on such CPUs (relative error ~0.6)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import compose
from finetune import config
from finetune.model import base as model_base
from finetune.model import tokenizer as tokenizer_mod


@pytest.fixture(scope="module")
def tiny():
    cfg = config.load(compose("recipe=tiny_qlora"))
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    model_base.prepare_path(cfg.model, tok)
    return cfg, tok


def dequantized_reference(q4):
    """A float32 copy of the 4-bit model with every Linear4bit replaced by nn.Linear of its dequantized weight."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    ref = copy.deepcopy(q4)
    for name, module in list(ref.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            w = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            lin.weight.requires_grad_(False)
            parent = ref.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], lin)
    return ref


def lora_grads(base, batch):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(123)  # same adapter weights for both models; B random so every A gets a gradient
    pm = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=config.LLAMA_LINEARS, init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    pm.train()
    pm(**batch, labels=batch["input_ids"]).loss.backward()
    return {n: p.grad.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}


def test_qlora_grads_match_dequantized_reference_after_an_eval_forward(tiny):
    cfg, tok = tiny
    q4 = model_base.load_base(cfg.model, cfg.quant)
    ids = torch.tensor([tok.sp.encode("[INST] What is two plus three? [/INST] Five.")])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q4.eval()
    with torch.no_grad():  # the forward that repacks 4-bit weights on AVX512-BF16 CPUs without the workaround
        q4(**batch)
    q4.train()
    ref = dequantized_reference(q4)
    got, want = lora_grads(q4, batch), lora_grads(ref, batch)
    assert got.keys() == want.keys() and len(got) == 2 * 7 * cfg.model.arch.num_layers
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def dequantized_any(model):
    """A float32 copy with every bitsandbytes layer (4-bit nf4/fp4, or LLM.int8) replaced by nn.Linear of its
    dequantized weight."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    ref = copy.deepcopy(model)
    for name, module in list(ref.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            w = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            scale = module.weight.SCB if module.weight.SCB is not None else module.state.SCB  # per output row
            w = module.weight.data.float() * scale.float()[:, None] / 127
        else:
            continue
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data.copy_(w)
        lin.weight.requires_grad_(False)
        setattr(ref.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1], lin)
    return ref


@pytest.mark.parametrize("mode, storage", [("fp4", None), ("int8", None), ("nf4", "bfloat16")])
def test_fp4_int8_and_bf16_storage_are_real_and_lora_grads_match_their_dequantized_weights(tiny, mode, storage):
    """`quant.mode=fp4` and `quant=int8` (LLM.int8()): the base's linear layers really hold 4-bit FP4 / int8 weights
    (each within quantization error of the float32 checkpoint), and LoRA trains through them as through those
    weights dequantized, after an eval forward too. `quant.storage_dtype=bfloat16` is the 4-bit storage FSDP-QLoRA
    loads (tests/gpu/test_fsdp.py needs CUDA); on the CPU its packed bytes must train the same."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    cfg, tok = tiny
    cfg = copy.deepcopy(cfg)
    cfg.quant.mode, cfg.quant.storage_dtype = mode, storage
    q = model_base.load_base(cfg.model, cfg.quant)
    layer = q.model.layers[0].mlp.down_proj
    if mode != "int8":
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == mode
        assert layer.weight.dtype == getattr(torch, storage or "uint8")
    else:
        assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    ids = torch.tensor([tok.sp.encode("[INST] What is two plus three? [/INST] Five.")])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    q.eval()
    with torch.no_grad():
        q(**batch)
    q.train()
    ref = dequantized_any(q)
    full = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32).model.layers[0].mlp.down_proj
    want = full.weight.detach()
    err = float((ref.model.layers[0].mlp.down_proj.weight - want).norm() / want.norm())
    assert 1e-4 < err < (0.02 if mode == "int8" else 0.3), err  # quantized, and close to the checkpoint
    got, want = lora_grads(q, batch), lora_grads(ref, batch)
    assert got.keys() == want.keys() and len(got) == 2 * 7 * cfg.model.arch.num_layers
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)
