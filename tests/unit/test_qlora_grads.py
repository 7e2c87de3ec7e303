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
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=config.LLAMA_LINEARS,
                                         init_lora_weights=False, task_type="CAUSAL_LM"))
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
