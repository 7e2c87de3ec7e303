"""On CUDA: the fused LoRA functions against peft (float32: exact; bf16 under autocast, as the GPU recipes train: no
further from a float32 reference than peft), and per-layer checkpointing with inputs offloaded to pinned host memory
on a side stream: the gradients of no checkpointing, and less peak memory than checkpointed inputs kept on the GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from tests.unit.test_fused_lora import assert_close, batch, gqa_path, load, loss_and_grads, with_lora  # noqa: E402,F401
from finetune.model import checkpointing, fused_layers  # noqa: E402


def cuda_batch():
    return {k: v.cuda() for k, v in batch().items()}


def lora_model(recipe, path, dtype):
    cfg, base = load(recipe, path, f"model.dtype={dtype}")
    return with_lora(base if cfg.quant.mode != "none" else base.cuda())  # a 4-bit base loads onto the GPU


def rel_errors(got, want):
    return {n: ((got[n] - want[n]).norm() / want[n].norm()).item() for n in want}


@pytest.mark.parametrize("recipe", ["tiny_lora", "tiny_qlora"])
def test_fused_equals_peft_in_float32_on_cuda(gqa_path, recipe):  # noqa: F811
    model, b = lora_model(recipe, gqa_path, "float32"), cuda_batch()
    step = lambda: model(**b).loss  # noqa: E731
    want = loss_and_grads(model, step)
    fused_layers.apply(model)
    assert_close(loss_and_grads(model, step), want)


@pytest.mark.parametrize("recipe", ["tiny_lora", "tiny_qlora"])
def test_fused_bf16_autocast_is_no_further_from_float32_than_peft(gqa_path, recipe):  # noqa: F811
    ref, b = lora_model(recipe, gqa_path, "float32"), cuda_batch()
    want = loss_and_grads(ref, lambda: ref(**b).loss)
    model = lora_model(recipe, gqa_path, "bfloat16")  # same seeds: the same LoRA, the base in bf16 (or NF4 + bf16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):  # what the Trainer does with bf16=True
            return model(**b).loss

    peft_err = rel_errors(loss_and_grads(model, step)[1], want[1])
    fused_layers.apply(model)
    fused_err = rel_errors(loss_and_grads(model, step)[1], want[1])
    assert max(fused_err.values()) <= 1.5 * max(peft_err.values()), (fused_err, peft_err)


def test_offloaded_checkpoints_give_the_same_gradients_and_less_memory(tmp_path):
    from tests.conftest import compose
    from finetune import config
    from finetune.model import base as model_base
    from finetune.model import tokenizer as tokenizer_mod

    path = tmp_path / "llama2-4layers"
    cfg = config.load(
        compose(
            "recipe=tiny_qlora",
            f"model.path={path}",
            "model.arch.num_layers=4",
            "model.arch.hidden_size=512",
            "model.arch.intermediate_size=1376",
            "model.dtype=float32",
        )
    )
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    model = with_lora(model_base.load_base(cfg.model, cfg.quant))
    fused_layers.apply(model)
    ids = torch.randint(3, 32000, (4, 1024), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    step = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731

    def peak(plan, offload):
        checkpointing.apply(model, plan, offload)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out = loss_and_grads(model, step)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated()

    want, _ = peak([False] * 4, False)
    kept, on_gpu = peak([True] * 4, False)
    got, offloaded = peak([True] * 4, True)
    assert_close(kept, want, layers=4)
    assert_close(got, want, layers=4)
    inputs = 4 * 1024 * 512 * 4  # one layer's input: tokens x hidden x float32
    assert on_gpu - offloaded >= 1.5 * inputs, (on_gpu, offloaded)  # 4 inputs kept vs at most 2 in flight
