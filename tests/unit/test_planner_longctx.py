"""The planner past 4,096 tokens: packed rows under SDPA hold an s x s boolean mask (none with flash attention),
LongLoRA's embeddings and norms are counted, and a long-context plan judges 24/48/80 GB cards with the change that
fits each (`python finetune/plan.py recipe=qlora_13b_32k`)."""

from __future__ import annotations

from tests.conftest import compose
from finetune.planning import planner, report

GiB = 2**30


def plan_of(*overrides: str):
    cfg = report.load(compose(*overrides))
    return cfg, report.setup(cfg, 1, "ddp")


def test_packed_sdpa_mask_and_longlora_terms():
    _, s = plan_of("recipe=qlora_13b_32k")
    parts = planner.memory(s).parts
    assert parts["attention mask (packed rows, SDPA: s x s bytes)"] == 32768**2  # 1 GiB: one packed row
    longlora = [v for k, v in parts.items() if k.startswith("LongLoRA embeddings + norms (164M")]
    assert longlora == [(32000 * 5120 + 81 * 5120) * (2 * 2 + 2)]  # bf16 copy + gradient, 8-bit Adam states
    flash = planner.memory(s.but(attention="flash_attention_2")).parts
    assert not any(k.startswith("attention mask") for k in flash)
    assert not any(k.startswith("LongLoRA") for k in planner.memory(s.but(train_embeddings_and_norms=False)).parts)


def test_long_context_plan_judges_the_common_cards():
    cfg, s = plan_of("recipe=qlora_13b_32k")
    _, text = report.report(cfg, s, report.Card("h100", 989.4e12, 79.6 * GiB, "test"), 0.295)
    lines = text.splitlines()
    at = lines.index("at 32768 tokens on one GPU of:")
    need = planner.memory(s).need / GiB
    assert 23.6 < need < 47.5  # between the 24 GB and 48 GB cards
    assert lines[at + 1].startswith(f"  24 GB: does not fit ({need:.1f} of 23.6 GiB); fits with trainer.memory_budget")
    assert lines[at + 2 : at + 4] == [
        f"  48 GB: fits ({need:.1f} of 47.5 GiB)",
        f"  80 GB: fits ({need:.1f} of 79.6 GiB)",
    ]
    cfg, s = plan_of("recipe=qlora_13b")
    _, short = report.report(cfg, s, report.Card("h100", 989.4e12, 79.6 * GiB, "test"), 0.295)
    assert "on one GPU of:" not in short  # plans at Llama 2's own context print what they always did
