"""On CUDA: the Triton SwiGLU kernels (finetune/model/swiglu_triton.py), compiled, against float32 autograd on the
cases tests/unit/test_kernels_swiglu.py runs under the interpreter, plus a 7B-sized MLP block (4,096 tokens x 11,008,
bf16); and the fused MLP really routes through them on CUDA."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
if importlib.util.find_spec("triton") is None:
    pytest.skip(
        "triton is not installed (a CUDA torch ships it; else pip install -r requirements-kernels.txt)",
        allow_module_level=True,
    )

from tests.unit.test_kernels_swiglu import DTYPES, SHAPES, TOL, errors  # noqa: E402
from finetune.model import swiglu, swiglu_triton  # noqa: E402


@pytest.mark.parametrize("rows,cols", SHAPES + [(4096, 11008)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_swiglu_matches_autograd_on_cuda(rows, cols, dtype):
    found = errors(swiglu_triton.forward, swiglu_triton.backward_, rows, cols, getattr(torch, dtype), "cuda")
    assert max(found.values()) <= TOL[dtype], found


def test_the_fused_mlp_uses_the_kernels_on_cuda(monkeypatch):
    assert swiglu.kernels_for(torch.empty(1, device="cuda")) is swiglu_triton
    monkeypatch.setenv("FINETUNE_TRITON", "0")  # the switch the benchmark uses to compare with PyTorch ops
    assert swiglu.kernels_for(torch.empty(1, device="cuda")) is None
