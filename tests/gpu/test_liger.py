"""`trainer.liger=true`: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU), applied the way transformers' Trainer applies
them for TRL, give the eager path's loss and LoRA gradients. Triton needs CUDA, so this runs on a GPU machine only.
Liger replaces transformers' Llama classes for the rest of the process: run this file in its own pytest process."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("Liger's kernels need CUDA", allow_module_level=True)
pytest.importorskip("liger_kernel", reason="pip install liger-kernel")

from tests.conftest import compose  # noqa: E402
from finetune import config
from finetune.data.load import Prepared  # noqa: E402
from finetune.data.stats import Stats  # noqa: E402
from finetune.model import base as model_base
from finetune.model import tokenizer as tokenizer_mod
from finetune.training import sft as sft_trainer


def lora_llama():
    """A small Llama 2 (fp32, on the GPU) with LoRA A and B both random, so every LoRA gradient is non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = config.load(compose("recipe=tiny_lora", "model.arch.hidden_size=256", "model.arch.intermediate_size=688"))
    hf_cfg = model_base.llama_config(cfg.model)
    hf_cfg.use_cache = False
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).cuda()
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=list(config.LLAMA_LINEARS), init_lora_weights=False)
    return cfg, get_peft_model(m, lora)


def loss_and_grads(m, ids):
    m.zero_grad()
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def test_liger_loss_and_lora_grads_equal_the_eager_path():
    from transformers.integrations.liger import apply_liger_kernel

    _, m = lora_llama()
    ids = torch.randint(3, 32000, (2, 256), generator=torch.Generator().manual_seed(0)).cuda()
    eager_loss, eager_grads = loss_and_grads(m, ids)
    apply_liger_kernel(m, {"fused_linear_cross_entropy": False})  # what Trainer does with TRL's use_liger_kernel
    mlp = m.get_base_model().model.layers[0].mlp
    assert mlp._get_name() == "LigerSwiGLUMLP"  # patched, so the comparison below compares two paths
    liger_loss, liger_grads = loss_and_grads(m, ids)
    assert abs(liger_loss - eager_loss) < 1e-5 * abs(eager_loss)
    assert all(g.abs().max() > 0 for g in eager_grads.values())
    for name, g in eager_grads.items():
        err = (liger_grads[name] - g).norm() / g.norm()
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"


def test_liger_knob_reaches_the_trainer(tmp_path):
    from datasets import Dataset

    cfg, m = lora_llama()
    cfg.trainer.liger, cfg.trainer.max_steps = True, 1
    ds = Dataset.from_dict({"input_ids": [[1, 5, 6, 7, 2]] * 2, "assistant_masks": [[1] * 5] * 2})
    trainer = sft_trainer.build(cfg, m, tokenizer_mod.load_tokenizer(cfg.model), Prepared(ds, None, Stats()), tmp_path)
    assert trainer.args.use_liger_kernel
