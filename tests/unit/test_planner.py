"""The planner's arithmetic: known sizes, a breakdown that adds up, GPU calibration, suggestions that fit."""

from __future__ import annotations

import pytest

from tests.conftest import compose
from finetune import config
from finetune.config import parse_size
from finetune.planning import planner
from finetune.planning.planner import GiB, Setup
from finetune.planning.report import Card, PlanError, check_before_training, suggestions

L7 = dict(hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32)
L13 = dict(hidden=5120, ffn=13824, layers=40, heads=40, kv_heads=40)
L70 = dict(hidden=8192, ffn=28672, layers=80, heads=64, kv_heads=8)
BENCH = dict(lora_r=16, micro_batch=2, max_length=2048, checkpointing=True, loss_head="hf")  # issue 8: plain HF
H100 = Card("h100", *planner.GPUS["h100"][:1], memory=planner.GPUS["h100"][1] * GiB, source="test")


def gpu_memory(text):
    return parse_size(text, "plan.gpu_memory", "G", "the memory per GPU like 24GB or 80GiB")


def part(est, prefix: str) -> float:
    return next(v for k, v in est.parts.items() if k.startswith(prefix))


def test_70b_nf4_double_quant_is_4_127_bits_per_weight():
    s = Setup(**L70, quant="nf4", double_quant=True)
    assert planner.weight_bits(s) == pytest.approx(4.127, abs=0.001)
    assert planner.weight_bits(s.but(double_quant=False)) == 4.5  # an fp32 absmax per block of 64
    n = planner.param_counts(s)
    assert n["layers"] + n["embed_head"] + n["norms"] == pytest.approx(68.98e9, rel=1e-3)  # Llama-2-70B
    weights = part(planner.memory(s), "base weights")
    assert weights == pytest.approx(n["layers"] * 4.127 / 8, rel=1e-3)
    assert 35.0e9 < weights < 35.5e9


def test_7b_bf16_weights_are_13_5_gb():
    est = planner.memory(Setup(**L7, quant="none"))
    weights = part(est, "base weights") + part(est, "embeddings")
    assert 13.4e9 < weights < 13.6e9


def test_breakdown_adds_up():
    for s in (Setup(**L13, quant="nf4", gpus=4, sharding="fsdp"), Setup(**L7, checkpointing=False, kind="dpo")):
        est = planner.memory(s)
        assert sum(est.parts.values()) == pytest.approx(est.need)
        reserve = part(est, "allocator reserve") + part(est, "CUDA context")
        assert est.need - reserve == pytest.approx(est.allocated)


# Measured peaks (torch, GiB) from issue 8: H100 rows plain HF at micro-batch 2 x 2048, r=16, checkpointing;
# H200 rows the same settings with checkpointing off and/or Liger kernels. bench/plan_calibration.md states each.
MEASURED = [
    (L7, dict(quant="nf4"), 8.27),
    (L7, dict(quant="none"), 18.58),
    (L13, dict(quant="nf4"), 13.11),
    (L13, dict(quant="none"), 34.36),
    (L7, dict(quant="nf4", checkpointing=False), 47.24),
    (L7, dict(quant="nf4", checkpointing=False, liger=True), 40.80),
    (L7, dict(quant="nf4", liger=True), 7.97),
    (L7, dict(quant="none", checkpointing=False, liger=True), 37.90),
]


@pytest.mark.parametrize("arch,kw,gib", MEASURED)
def test_estimate_matches_gpu_measurements(arch, kw, gib):
    head = {"loss_head": "liger"} if kw.get("liger") else {}  # Liger's fused linear cross-entropy
    est = planner.memory(Setup(**arch, **{**BENCH, **kw, **head})).allocated / GiB
    # the two 16-bit + checkpointing rows also fit planner.BF16_CHECKPOINTING_EXCESS (without it: -16%, -18%)
    assert est == pytest.approx(gib, rel=0.05)


@pytest.mark.parametrize(
    "arch,quant,measured", [(L7, "nf4", 4896), (L7, "none", 6359), (L13, "nf4", 3083), (L13, "none", 3839)]
)
def test_tokens_per_second_matches_h100_measurements(arch, quant, measured):
    tps = planner.tokens_per_second(Setup(**arch, quant=quant, **BENCH), H100.peak_flops)
    assert tps == pytest.approx(measured, rel=0.12)  # utilization and dequantization fitted on these rows


def test_each_memory_lever_moves_the_estimate_the_right_way():
    s = Setup(**L13, quant="none", micro_batch=4, max_length=4096, checkpointing=True)
    need = planner.memory(s).need
    # 24.2 GiB of bf16 layer weights -> 6.1 GiB of NF4, less what peft's float32 residual adds to checkpoints
    qlora = planner.memory(s.but(quant="nf4"))
    assert qlora.need < need - 10 * GiB
    assert part(qlora, "checkpointed") == 2 * part(planner.memory(s), "checkpointed")
    assert planner.memory(s.but(checkpointing=False)).need > need + 30 * GiB
    assert planner.memory(s.but(optim="paged_adamw_8bit")).need < need
    assert planner.memory(s.but(kind="dpo")).need > need  # chosen + rejected: twice the tokens
    dpo = s.but(kind="dpo", checkpointing=False)  # the reference forward runs on top of the policy's activations
    assert any(k.startswith("peak transient: reference forward") for k in planner.memory(dpo).parts)
    n_mat = planner.param_counts(s)["layers"] + s.vocab * s.hidden
    attn = 2 * s.layers * s.hidden * s.max_length
    assert planner.flops_per_token(dpo) - planner.flops_per_token(dpo.but(precompute_ref=True)) == 2 * n_mat + attn
    fsdp = planner.memory(s.but(gpus=4, sharding="fsdp"))
    assert part(fsdp, "base weights") == pytest.approx(part(planner.memory(s), "base weights") / 4)


def test_a_recipe_that_cannot_fit_gets_changes_that_each_fit():
    s = Setup(**L13, quant="none", micro_batch=4, max_length=4096, checkpointing=False, optim="adamw_torch")
    card = Card("rtx4090", 165.2e12, 24 * GiB, "test")
    assert planner.memory(s).need > card.memory
    found = suggestions(s, card, grad_accum=4)
    assert found, "no suggestion"
    for label, new in found:
        assert planner.memory(new).need <= card.memory, label
    assert any(label.startswith("quant.mode=nf4") or "FSDP" in label for label, _ in found)


def test_cuda_device_names_map_to_the_gpu_table():
    names = {
        "NVIDIA H100 80GB HBM3": "h100",
        "NVIDIA H100 PCIe": "h100-pcie",
        "NVIDIA H200": "h200",
        "NVIDIA A100-SXM4-40GB": "a100-40gb",
        "NVIDIA A100 80GB PCIe": "a100-80gb",
        "NVIDIA L40S": "l40s",
        "NVIDIA L4": "l4",
        "NVIDIA A10": "a10",
        "NVIDIA GeForce RTX 4090": "rtx4090",
        "Tesla T4": "t4",
        "NVIDIA B200": None,
    }
    assert {n: planner.gpu_named(n) for n in names} == names


def test_memory_sizes_parse_like_gpu_makers_write_them():
    assert gpu_memory("24GB") == 24 * GiB == gpu_memory("24GiB") == gpu_memory("24")
    assert gpu_memory("512MB") == 0.5 * GiB
    with pytest.raises(config.ConfigError, match="plan.gpu_memory=lots: write the memory per GPU like 24GB"):
        gpu_memory("lots")


def test_training_check_skips_on_a_cpu_and_stops_or_warns_on_a_named_gpu():
    cfg = config.load(compose())
    assert check_before_training(cfg).startswith("plan: no GPU present, memory check skipped")
    cfg = config.load(compose("plan.gpus=1", "plan.gpu_memory=512MB"))
    with pytest.raises(PlanError, match="(?s)cannot fit.*DOES NOT FIT, needs .* GiB per GPU, has 0.5"):
        check_before_training(cfg)
    cfg = config.load(compose("plan.gpus=1", "plan.gpu_memory=512MB", "plan.strict=false"))
    assert check_before_training(cfg).startswith("warning: the plan says this run does not fit")
