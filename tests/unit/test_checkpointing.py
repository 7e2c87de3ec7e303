"""Per-layer checkpointing with offloaded inputs (model/checkpointing.py) gives the gradients of no checkpointing,
and recomputes exactly the layers the plan marks; and the budget planner (planning/budget.py) never plans past the
budget it was given."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_fused_lora import assert_close, batch, gqa_path, load, loss_and_grads, with_lora  # noqa: F401
from finetune.model import checkpointing, fused_layers
from finetune.planning import budget, planner
from finetune.planning.planner import GiB, Setup


def count_layer_calls(model) -> list[int]:
    calls = [0] * len(checkpointing.decoder_layers(model))
    for i, layer in enumerate(checkpointing.decoder_layers(model)):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("recipe,fused", [("tiny_lora", False), ("tiny_qlora", True)])
@pytest.mark.parametrize("plan,offload", [([True, False], False), ([True, True], True), ([False, True], True)])
def test_planned_checkpointing_gives_the_gradients_of_none(gqa_path, recipe, fused, plan, offload):  # noqa: F811
    _, base = load(recipe, gqa_path)
    model, b = with_lora(base), batch()  # embeddings frozen and no input grads: layer 0's input needs no grad
    if fused:
        fused_layers.apply(model)
    step = lambda: model(**b).loss  # noqa: E731
    want = loss_and_grads(model, step)
    checkpointing.apply(model, plan, offload)
    calls = count_layer_calls(model)
    assert_close(loss_and_grads(model, step), want)
    assert calls == [2 if on else 1 for on in plan]  # the marked layers, and only they, ran again in backward


L7 = dict(hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32)
L70 = dict(hidden=8192, ffn=28672, layers=80, heads=64, kv_heads=8)
SETUPS = [
    Setup(**L7, quant="nf4", upcast_fp32=False, micro_batch=2, max_length=2048, liger=True),
    Setup(**L7, quant="none", micro_batch=4, max_length=4096),
    Setup(**L70, quant="nf4", micro_batch=1, max_length=4096, kind="dpo"),
]


@pytest.mark.parametrize("s", SETUPS)
def test_budget_plan_never_exceeds_its_budget_and_keeps_what_fits(s):
    peak = planner.GPUS["h100"][0]
    plain = planner.memory(s.but(checkpointing=False)).need
    offloaded_all = planner.memory(s.but(checkpointing=True, offload_checkpoints=True)).need
    last = None
    for gib in range(2, int(plain / GiB) + 8):
        plan = budget.choose(s, gib * GiB, peak, 0.3)
        if plan is None:  # only when not even every layer checkpointed with inputs offloaded fits
            assert offloaded_all > gib * GiB
            continue
        assert planner.memory(plan.setup).need == plan.need <= gib * GiB
        kept = plan.setup.kept_layers if plan.setup.checkpointing else s.layers
        if kept < s.layers:  # one more kept layer would not fit, with this offload setting
            more = plan.setup.but(kept_layers=kept + 1, checkpointing=kept + 1 < s.layers)
            assert planner.memory(more).need > gib * GiB
        if last is not None:
            assert plan.tokens_per_s >= last.tokens_per_s  # a larger budget is never slower
        last = plan
    assert not last.setup.checkpointing  # with room for everything, nothing is recomputed
    assert "32 of 32 layers keep their activations" in last.line() or s.layers != 32


def test_offload_counts_two_inputs_and_stalls_only_past_the_link():
    s = SETUPS[0].but(checkpointing=True)
    on, off = planner.memory(s.but(offload_checkpoints=True)), planner.memory(s)
    inputs = 2 * 2048 * 2 * 4096  # tokens x bf16 x hidden
    assert off.allocated - on.allocated == pytest.approx((32 - 2) * inputs)
    peak = planner.GPUS["h100"][0]
    assert budget.speed(s.but(offload_checkpoints=True), peak, 0.3) == pytest.approx(budget.speed(s, peak, 0.3))
    assert budget.speed(s.but(offload_checkpoints=True), peak, 0.3, link=1e8) < budget.speed(s, peak, 0.3) / 2


def test_bad_memory_budget_is_one_error_naming_the_key_before_weights():
    from tests.conftest import compose
    from finetune.training import checks

    found = checks.problems(
        compose("recipe=tiny_qlora", "trainer.memory_budget=lots", "trainer.gradient_checkpointing=false")
    )
    assert "trainer.memory_budget=lots: write a size like 40GB, or auto" in found
    assert any(p.startswith("trainer.memory_budget plans which layers") for p in found)
    if not torch.cuda.is_available():
        assert any(
            p.startswith("trainer.memory_budget=auto reads the GPU's free memory")
            for p in checks.problems(compose("recipe=tiny_qlora", "trainer.memory_budget=auto"))
        )


def test_budget_too_small_for_any_plan_stops_with_the_smallest_plan():
    from tests.conftest import compose
    from finetune import config
    from finetune.planning.report import PlanError, budget_plan

    cfg = config.load(compose("recipe=qlora_7b", "trainer.memory_budget=4GB"))
    with pytest.raises(PlanError, match=r"no checkpointing plan fits trainer.memory_budget=4GB \(4.0 GiB\)") as err:
        budget_plan(cfg)
    assert "tokens, offloaded)" in str(err.value) and "verdict: DOES NOT FIT" in str(err.value)
    plan = budget_plan(config.load(compose("recipe=qlora_7b", "trainer.memory_budget=24GB")))
    assert plan.need <= 24 * GiB and "(trainer.memory_budget=24GB)" in plan.line()


def test_offloaded_recompute_draws_the_forwards_dropout_masks(gqa_path):  # noqa: F811
    """With LoRA dropout the recompute must run under the forward's RNG state (it skips saving one only when no
    dropout is active): the gradients then equal those of no checkpointing under the same seed."""
    _, base = load("tiny_lora", gqa_path)
    model, b = with_lora(base, dropout=0.3), batch()
    step = lambda: model(**b).loss  # noqa: E731
    torch.manual_seed(7)
    want = loss_and_grads(model, step)
    checkpointing.apply(model, [True, True], offload=True)
    assert all(checkpointing.draws_random(layer) for layer in checkpointing.decoder_layers(model))
    torch.manual_seed(7)
    assert_close(loss_and_grads(model, step), want)
    model.eval()
    assert not any(checkpointing.draws_random(layer) for layer in checkpointing.decoder_layers(model))
