"""SwiGLU for the fused MLP (finetune/model/swiglu.py) against PyTorch autograd in float32: the PyTorch path in this
process, and the Triton kernels (finetune/model/swiglu_triton.py) on CPU tensors under TRITON_INTERPRET=1 in a
subprocess (the variable must be set before triton is imported, and another test may have imported it already).
g and u are the two halves of one [N, 2I] gate|up buffer, as the fused MLP hands them over; the backward must leave
h in the returned tensor, d(gate) in g and d(up) in u. bf16 runs with the kernels' float32 math (the interpreter's
bf16 arithmetic is wrong; its bf16 loads, stores and casts are exact). tests/gpu/test_kernels_gpu.py runs the
same cases on CUDA."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

SHAPES = [(37, 300), (96, 264)]  # 11,100 and 25,344 elements per half; both end in a partial block
DTYPES = ["float32", "float16", "bfloat16"]
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}  # max |error| / max |reference|, per output


def errors(fwd, bwd_, rows: int, cols: int, dtype: torch.dtype, device: str = "cpu") -> dict[str, float]:
    """Relative max errors of h (forward), and of h, d(gate), d(up) (backward) against float32 autograd."""
    gen = torch.Generator().manual_seed(rows * cols)
    gu = (torch.randn(rows, 2 * cols, generator=gen) * 3).to(dtype).to(device)
    dh = torch.randn(rows, cols, generator=gen).to(dtype).to(device)
    g32, u32 = (t.float().requires_grad_() for t in gu.split(cols, dim=1))
    h32 = torch.nn.functional.silu(g32) * u32
    h32.backward(dh.float())

    def rel(got, want):
        return ((got.float() - want).abs().max() / want.abs().max()).item()

    g, u = gu.split(cols, dim=1)
    found = {"forward h": rel(fwd(g, u), h32.detach())}
    h = bwd_(dh, g, u)
    found.update({"backward h": rel(h, h32.detach()), "d_gate": rel(g, g32.grad), "d_up": rel(u, u32.grad)})
    return found


def interpreter_cases() -> dict:
    """Every shape and dtype through the Triton kernels; run under TRITON_INTERPRET=1 (see main)."""
    from finetune.model import swiglu_triton

    out = {"refused": ""}
    for rows, cols in SHAPES:
        for name in DTYPES:
            t0 = time.perf_counter()
            found = errors(swiglu_triton.forward, swiglu_triton.backward_, rows, cols, getattr(torch, name))
            out[f"{rows}x{cols} {name}"] = {"errors": found, "seconds": time.perf_counter() - t0}
    try:  # a transposed u (column stride 4) would be read at the wrong addresses
        swiglu_triton.forward(torch.randn(4, 6), torch.randn(6, 4).t())
    except ValueError as exc:
        out["refused"] = str(exc)
    return out


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_swiglu_matches_autograd(rows, cols, dtype):
    from finetune.model import swiglu

    found = errors(swiglu.forward, swiglu.backward_, rows, cols, getattr(torch, dtype))
    assert max(found.values()) <= TOL[dtype], found


@pytest.fixture(scope="module")
def interpreted():
    if importlib.util.find_spec("triton") is None:
        pytest.skip(
            "triton is not installed (pip install -r requirements-kernels.txt): the Triton SwiGLU kernels "
            "are checked under TRITON_INTERPRET=1 only where it is"
        )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": root}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"interpreter subprocess: {time.perf_counter() - t0:.1f} s; per case: "
        + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in cases.items() if k != "refused")
    )
    return cases


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_swiglu_matches_autograd_under_the_interpreter(interpreted, rows, cols, dtype):
    found = interpreted[f"{rows}x{cols} {dtype}"]["errors"]
    assert max(found.values()) <= TOL[dtype], found


def test_kernels_refuse_a_tensor_they_would_misaddress(interpreted):
    assert interpreted["refused"].startswith("SwiGLU kernels take 2-D tensors of one shape with unit column stride")


if __name__ == "__main__":  # the subprocess of `interpreted`: TRITON_INTERPRET=1 is set before triton is imported
    assert os.environ.get("TRITON_INTERPRET") == "1"
    print(json.dumps(interpreter_cases()))
