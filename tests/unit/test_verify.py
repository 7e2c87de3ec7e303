"""Export verification (finetune/ship/verify.py) on small in-process Llamas: a merged model that drifts more than
float32 rounding fails at the default float32 tolerance, and the count of identical greedy generations is the
real count (a merged model that generates other text says so in verification.json and the model card)."""

from __future__ import annotations

import copy

import pytest
import torch

from finetune.ship import verify

PROMPTS = [[1, 518, 900, 1000, 15, 518, 29, 25, 962], [1, 7, 8, 9, 10, 11], [1, 300, 301, 302]]


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def scaled(net, factor: float):
    """The same model with every logit multiplied by `factor`: a drift of exactly (factor - 1) relative to max
    |logits|, and the same greedy generations (argmax does not move)."""
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.lm_head.weight.mul_(factor)
    return other


@pytest.fixture(scope="module")
def reference():
    net = tiny_llama(0)
    return net, verify.run_prompts(net, PROMPTS, max_new_tokens=8)


def drift(reference_out, merged_net, tolerance):
    merged_out = verify.run_prompts(merged_net, PROMPTS, max_new_tokens=8)
    return verify.compare(
        "the adapter model as trained",
        reference_out,
        merged_out,
        tolerance,
        lambda ids: " ".join(map(str, ids)),
        PROMPTS,
    ), merged_out


def test_float32_merge_that_drifts_3e_4_fails_and_rounding_passes(reference):
    net, ref = reference
    fp32 = verify.default_tolerance(torch.float32, torch.float32)
    off, _ = drift(ref, scaled(net, 1 + 3e-4), fp32)
    assert off.relative == pytest.approx(3e-4, rel=0.05)
    assert not off.ok, f"a float32 merge {off.relative:.1e} away from the adapter model passed at {fp32:.0e}"
    assert off.same_generations == off.prompts == 3  # the drift is in the logits only
    rounding, _ = drift(ref, scaled(net, 1 + 2e-7), fp32)  # what a correct float32 merge shows (3.6e-7 measured)
    assert rounding.ok and rounding.relative < 1e-6
    # a 16-bit side rounds more: 3e-4 is within its tolerance
    assert drift(ref, scaled(net, 1 + 3e-4), verify.default_tolerance(torch.bfloat16, torch.float32))[0].ok


def test_different_greedy_generations_are_counted_as_different(reference):
    _, ref = reference
    d, other = drift(ref, tiny_llama(1), tolerance=1e9)  # another model: logits within any tolerance given
    identical = [r[1] == o[1] for r, o in zip(ref, other)]
    assert not all(identical)
    assert d.same_generations == sum(identical) < d.prompts
    assert f"greedy generations identical on {sum(identical)}/3 prompts" in d.summary()
    assert [s["merged"] for s in d.samples] == [" ".join(map(str, o[1])) for o in other]
    assert [s["reference"] for s in d.samples] == [" ".join(map(str, r[1])) for r in ref]


def gguf_check(same: int, max_abs: float, margin: float):
    from finetune.ship.llamacpp import GGUFCheck

    return GGUFCheck(
        type="q8_0",
        gate="logits",
        tolerance=5e-2,
        max_abs=max_abs,
        logit_scale=0.8,
        ppl_merged=9.0,
        ppl_gguf=9.1,
        scored_tokens=100,
        prompts=4,
        same_generations=same,
        template_ids_exact=True,
        margin=margin,
    )


def test_gguf_summary_says_whether_different_greedy_answers_are_expected():
    """The tiny random model's top two logits are often within 1e-3: a q8_0 file moving logits by 1e-2 may answer
    otherwise, as expected; with logits moved less than half the closest gap, a different answer is not."""
    flat = gguf_check(0, max_abs=1.2e-2, margin=3e-4).summary()
    assert (
        "greedy generations identical on 0/4 prompts (expected for q8_0 on this model: its logits move by up "
        "to 0.012 and merged/'s top two candidates come within 0.0003 of each other, so a greedy answer can take "
        "another token; the gate decides); template ids exact"
    ) in flat
    peaked = gguf_check(3, max_abs=1e-3, margin=0.5).summary()
    assert (
        "identical on 3/4 prompts (not expected: logits moved by at most 0.001, less than half of merged/'s "
        "closest top-two gap 0.5;"
    ) in peaked
    assert "identical on 4/4 prompts; template ids exact" in gguf_check(4, max_abs=1e-3, margin=0.5).summary()
