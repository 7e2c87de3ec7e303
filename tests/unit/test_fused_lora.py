"""`trainer.fused_lora`: the fused LoRA functions against peft on the same weights (one model, before and after its
attention and MLP instances are replaced), float32 and NF4, with and without checkpointing, SFT and TRL's DPO; and
the one-line fallback where they do not apply. The tiny model here has grouped-query attention (k/v narrower)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import compose
from finetune import config
from finetune.model import base as model_base
from finetune.model import fused_layers
from finetune.model import tokenizer as tokenizer_mod

TOL = 1e-5  # relative, loss and each LoRA gradient (norm of the difference / norm of peft's)


@pytest.fixture(scope="module")
def gqa_path(tmp_path_factory):
    """A tiny random Llama-2 with 4 query and 2 key/value heads, written once for this module."""
    path = tmp_path_factory.mktemp("fused") / "llama2-tiny-gqa"
    cfg = config.load(compose("recipe=tiny_lora", f"model.path={path}", "model.arch.num_kv_heads=2"))
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    return str(path)


def load(recipe: str, path: str, *overrides: str):
    cfg = config.load(compose(f"recipe={recipe}", f"model.path={path}", "model.arch.num_kv_heads=2", *overrides))
    return cfg, model_base.load_base(cfg.model, cfg.quant)


def with_lora(base, dropout: float = 0.0, use_dora: bool = False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # B random (not zero), so every A has a gradient
    return get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=dropout,
            init_lora_weights=False,
            use_dora=use_dora,
            target_modules=config.LLAMA_LINEARS,
            task_type="CAUSAL_LM",
        ),
    )


def batch():
    ids = torch.randint(3, 32000, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    model.train()
    loss = loss_fn()
    loss.backward()
    return loss.item(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_close(got, want, tol=TOL, layers=2):
    (loss_got, g_got), (loss_want, g_want) = got, want
    assert abs(loss_got - loss_want) <= tol * abs(loss_want), (loss_got, loss_want)
    assert g_got.keys() == g_want.keys() and len(g_want) == 2 * 7 * layers  # A and B of 7 linears per layer
    errors = {n: ((g_got[n] - g_want[n]).norm() / g_want[n].norm()).item() for n in g_want}
    assert all(g.norm() > 0 for g in g_want.values())
    assert max(errors.values()) <= tol, {n: e for n, e in errors.items() if e > tol}


def enable_checkpointing(peft_model):
    peft_model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()


def count_mlp_calls(peft_model) -> list[int]:
    calls = [0]
    for layer in fused_layers.decoder_layers(peft_model):
        layer.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("recipe", ["tiny_lora", "tiny_qlora"])  # float32 base, NF4 base (bitsandbytes on the CPU)
def test_fused_sft_loss_and_grads_equal_peft(gqa_path, recipe):
    _, base = load(recipe, gqa_path)
    model, b = with_lora(base), batch()
    step = lambda: model(**b).loss  # noqa: E731
    want = loss_and_grads(model, step)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(**b).logits
    names = [n for n, _ in model.named_parameters()]

    assert fused_layers.apply(model).startswith("fused LoRA: q/k/v, o and SwiGLU MLP of 2 layers")
    assert isinstance(fused_layers.decoder_layers(model)[0].self_attn, fused_layers.FusedLlamaAttention)
    assert_close(loss_and_grads(model, step), want)
    assert [n for n, _ in model.named_parameters()] == names  # peft's names: adapters save and load unchanged
    with torch.no_grad(), model.disable_adapter():  # adapters off: the fused modules run the base alone
        torch.testing.assert_close(model(**b).logits, base_logits, rtol=1e-5, atol=1e-5)

    enable_checkpointing(model)  # the fused functions inside non-reentrant checkpointing: recomputed, same grads
    calls = count_mlp_calls(model)
    assert_close(loss_and_grads(model, step), want)
    assert calls[0] == 2 * 2  # each layer's MLP ran twice: forward and recompute


def test_an_mlp_without_act_fn_fuses_with_silu_from_the_config(gqa_path):
    """Liger's kernel patch swaps Llama's MLP class for one without `act_fn` (seen on the H200, 2026-11-30: every
    fused arm after a Liger arm in one process failed); the fused MLP takes SiLU from the config."""
    _, base = load("tiny_lora", gqa_path)
    model, b = with_lora(base), batch()
    step = lambda: model(**b).loss  # noqa: E731
    want = loss_and_grads(model, step)
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(**b).logits
    for layer in fused_layers.decoder_layers(model):
        del layer.mlp.act_fn
    assert fused_layers.apply(model).startswith("fused LoRA: q/k/v, o and SwiGLU MLP of 2 layers")
    assert_close(loss_and_grads(model, step), want)
    with torch.no_grad(), model.disable_adapter():
        torch.testing.assert_close(model(**b).logits, base_logits, rtol=1e-5, atol=1e-5)


def add_lora(model, name: str, seed: int):
    from peft import LoraConfig

    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, target_modules=config.LLAMA_LINEARS)
    model.add_adapter(name, cfg)


def test_fused_calls_follow_adapter_switches_merges_and_a_recreated_adapter(gqa_path):
    """The fused modules cache their projections and adapter tensors per adapter state (fused_gather.Gather): after
    set_adapter(), disable_adapter(), a merge, and an adapter deleted and re-created under the same name and scale,
    the fused model must still compute what peft computes, with gradients on the active adapter's new tensors. Two
    identical models, one fused, get the same changes."""
    models = [with_lora(load("tiny_lora", gqa_path)[1]) for _ in range(2)]
    plain, fused = models
    assert fused_layers.apply(fused).startswith("fused LoRA: q/k/v, o and SwiGLU MLP of 2 layers")
    b = batch()

    def both(change):
        for m in models:
            change(m)

    def assert_same_training_step():  # a stale tuple is off by O(1); float32 rounding here reaches ~1e-5
        got, want = loss_and_grads(fused, lambda: fused(**b).loss), loss_and_grads(plain, lambda: plain(**b).loss)
        assert_close(got, want, tol=1e-4)

    def assert_same_logits():
        with torch.no_grad():
            torch.testing.assert_close(fused(**b).logits, plain(**b).logits, rtol=1e-5, atol=1e-5)

    assert_same_training_step()  # "default" active: the cache filled
    both(lambda m: add_lora(m, "other", seed=2))
    both(lambda m: m.set_adapter("other"))
    assert_same_training_step()
    with plain.disable_adapter(), fused.disable_adapter():
        assert_same_logits()
    both(lambda m: m.set_adapter("default"))
    assert_same_training_step()
    both(lambda m: m.merge_adapter())  # merged into the base: the fused modules run peft's own layers
    assert_same_logits()
    both(lambda m: m.unmerge_adapter())
    assert_same_training_step()
    both(lambda m: m.delete_adapter("other"))  # re-created: same name, same scale, new tensors
    both(lambda m: add_lora(m, "other", seed=3))
    both(lambda m: m.set_adapter("other"))
    assert_same_training_step()


def dpo_trainer(gqa_path, tmp_path):
    """TRL's DPOTrainer through our builder on a few short bundled pairs; the frozen "ref" adapter made to differ
    from the policy, so a fused layer that ignored which adapter is active would change the loss."""
    from finetune.data import load as data_load
    from finetune.training import dpo

    cfg, base = load(
        "tiny_dpo",
        gqa_path,
        "data=oasst_pairs",
        "data.max_samples=8",
        "data.cache=false",
        "data.max_length=128",
        "data.max_prompt_length=96",
        "eval.samples=0",
        "trainer.micro_batch_size=2",
    )
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    model = with_lora(base)
    trainer = dpo.build(cfg, model, tok, data_load.load(cfg.data, tok, "dpo"), tmp_path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ref.lora_B" in name:
                p.neg_()
    return trainer, model, next(iter(trainer.get_train_dataloader()))


def set_adapters(model, values=None, dtype=torch.float32):
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data = values[name] if values else p.data.to(dtype)


@pytest.mark.slow  # TRL's DPO loss over the 32,000-token vocabulary: ~20 s on 2 cores
def test_fused_dpo_loss_and_grads_equal_peft(gqa_path, tmp_path):
    trainer, model, b = dpo_trainer(gqa_path, tmp_path)
    step = lambda: trainer.compute_loss(model, b)  # noqa: E731
    bf16 = {n: p.data.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in bf16.values()} == {torch.bfloat16}  # TRL casts a QLoRA adapter to bf16
    peft_bf16 = loss_and_grads(model, step)
    set_adapters(model)  # float32 adapters: the comparison that can be exact
    want = loss_and_grads(model, step)
    assert abs(want[0] - math.log(2)) > 5e-5  # the reference is not the policy

    fused_layers.apply(model)
    assert_close(loss_and_grads(model, step), want)
    enable_checkpointing(model)
    calls = count_mlp_calls(model)
    assert_close(loss_and_grads(model, step), want)
    assert calls[0] == 2 * 2 + 2  # policy forward + recompute per layer, and the reference pass (no grad)

    # TRL's bf16 adapter rounds differently from peft's: held to the float32 result, no worse than peft
    set_adapters(model, bf16)
    fused_err, peft_err = rel_errors(loss_and_grads(model, step)[1], want[1]), rel_errors(peft_bf16[1], want[1])
    assert max(fused_err.values()) <= 1.5 * max(peft_err.values()), (fused_err, peft_err)


def rel_errors(got, want):
    return {n: ((got[n] - want[n]).norm() / want[n].norm()).item() for n in want}


@pytest.mark.parametrize(
    "kwargs,why", [({"dropout": 0.1}, "lora.dropout=0.1 > 0"), ({"use_dora": True}, "DoRA (lora.use_dora=true)")]
)
def test_dropout_or_dora_falls_back_with_one_line_and_replaces_nothing(gqa_path, kwargs, why):
    _, base = load("tiny_lora", gqa_path)
    model = with_lora(base, **kwargs)
    line = fused_layers.apply(model)
    assert line.startswith(f"fused LoRA: off ({why}") and "to fuse" in line
    assert "\n" not in line and not fused_layers.fused(model)


def test_another_architecture_falls_back():
    from transformers import MistralConfig, MistralForCausalLM

    model = with_lora(
        MistralForCausalLM(
            MistralConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                vocab_size=128,
            )
        )
    )
    assert (
        fused_layers.apply(model) == "fused LoRA: off (model type 'mistral' is not Llama); training runs "
        "peft's own layers"
    )
