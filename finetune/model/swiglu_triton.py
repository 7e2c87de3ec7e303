"""SwiGLU as two Triton kernels: h = silu(g) * u forward, and the backward in place over the buffers it reads.

Imported only where triton is installed (finetune/model/swiglu.py decides). g, u and dh are 2-D (rows x cols) with
unit column stride and any row stride, so g and u can be the two halves of one [N, 2I] gate|up GEMM output. All
arithmetic is in float32 (sigmoid included), each result rounded once to its buffer's dtype; this also keeps the
kernels correct under TRITON_INTERPRET=1, whose bf16 arithmetic is wrong (its bf16 loads, stores and casts are
exact). Indices are int64, so tensors past 2^31 elements are addressed correctly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _swiglu_fwd(g_ptr, u_ptr, h_ptr, n, cols, g_stride, u_stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row, col = offs // cols, offs % cols
    g = tl.load(g_ptr + row * g_stride + col, mask=mask, other=0).to(tl.float32)
    u = tl.load(u_ptr + row * u_stride + col, mask=mask, other=0).to(tl.float32)
    h = g * tl.sigmoid(g) * u
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(dh_ptr, g_ptr, u_ptr, n, cols, dh_stride, g_stride, u_stride, BLOCK: tl.constexpr):
    """Reads dh, g, u; writes h = silu(g) u over dh, dg = dh u silu'(g) over g, du = dh silu(g) over u."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    row, col = offs // cols, offs % cols
    dh_at, g_at, u_at = dh_ptr + row * dh_stride + col, g_ptr + row * g_stride + col, u_ptr + row * u_stride + col
    dh = tl.load(dh_at, mask=mask, other=0).to(tl.float32)
    g = tl.load(g_at, mask=mask, other=0).to(tl.float32)
    u = tl.load(u_at, mask=mask, other=0).to(tl.float32)
    sg = tl.sigmoid(g)
    silu = g * sg
    dg = dh * u * sg * (1.0 + g * (1.0 - sg))  # silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g)))
    tl.store(dh_at, (silu * u).to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(g_at, dg.to(g_ptr.dtype.element_ty), mask=mask)
    tl.store(u_at, (dh * silu).to(u_ptr.dtype.element_ty), mask=mask)


def _check(*ts: torch.Tensor) -> None:
    shape = ts[0].shape
    for t in ts:
        if t.dim() != 2 or t.shape != shape or t.stride(1) != 1:
            raise ValueError(
                f"SwiGLU kernels take 2-D tensors of one shape with unit column stride, got "
                f"{[(tuple(x.shape), x.stride()) for x in ts]}"
            )


def forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u as a new contiguous tensor of g's dtype."""
    _check(g, u)
    h = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    n, cols = g.numel(), g.shape[1]
    if n:
        _swiglu_fwd[(triton.cdiv(n, BLOCK),)](g, u, h, n, cols, g.stride(0), u.stride(0), BLOCK=BLOCK)
    return h


def backward_(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """In place: dh becomes h = silu(g) * u, g becomes d(gate), u becomes d(up); returns dh (now h)."""
    _check(dh, g, u)
    n, cols = g.numel(), g.shape[1]
    if n:
        _swiglu_bwd[(triton.cdiv(n, BLOCK),)](dh, g, u, n, cols, dh.stride(0), g.stride(0), u.stride(0), BLOCK=BLOCK)
    return dh
