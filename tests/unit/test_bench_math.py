"""The benchmark's arithmetic: model FLOPs match the research model, and the correctness gate fails when it must."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ROOT, compose

sys.path.insert(0, str(ROOT / "bench"))
import perf  # noqa: E402
from finetune import config


@pytest.mark.parametrize(
    "recipe, seq, gflops",
    [("qlora_7b", 2048, 28.28), ("qlora_7b", 4096, 29.89), ("qlora_13b", 2048, 54.30), ("qlora_13b", 4096, 56.82)],
)
def test_flops_per_token_match_performance_anchors(recipe, seq, gflops):
    arch = config.load(compose(f"recipe={recipe}")).model.arch  # table 3.3 of shared/research/performance-anchors.md
    assert perf.llama_flops_per_token(arch, 16, config.LLAMA_LINEARS, seq) / 1e9 == pytest.approx(gflops, rel=2e-3)


def arm(losses, grads):
    return perf.ArmResult("x", 1.0, 1.0, 1.0, 0.1, None, None, 0.0, losses=losses, grad_norms=grads)


def test_gate_passes_equal_math_and_fails_changed_math_or_dead_gradients():
    ref = arm([10.4, 10.3, 10.2], [0.5, 0.4, 0.3])
    assert perf.gate(ref, arm([10.4, 10.3, 10.2001], [0.5, 0.4, 0.3001]), 1e-4, 1e-3)[0]
    assert not perf.gate(ref, arm([10.4, 10.3, 10.2], [0.5, 0.44, 0.3]), 1e-4, 1e-3)[0]  # a gradient 10% off
    assert not perf.gate(ref, arm([10.4, 10.35, 10.2], [0.5, 0.4, 0.3]), 1e-4, 1e-3)[0]  # a loss off
    assert not perf.gate(arm([10.4], [0.0]), arm([10.4], [0.0]), 1e-4, 1e-3)[0]  # "fast" because nothing trains
