"""SwiGLU for the fused MLP: h = silu(g) * u forward, and a backward that overwrites the buffers it was given.

On CUDA with triton installed, one Triton kernel each way (finetune/model/swiglu_triton.py); elsewhere (the CPU, or
`FINETUNE_TRITON=0` to compare) the same contract in PyTorch ops. `FINETUNE_TRITON=cpu` runs the kernels on CPU
tensors too, for the interpreter (TRITON_INTERPRET=1: bench/opcount.py and the kernels' tests).
`backward_(dh, g, u)` leaves d(gate) in g and d(up) in u (so when g and u are the halves of one gate|up buffer,
the input gradient is one GEMM over it) and returns h, which the down projection's LoRA gradients need: the kernel
writes it over dh, the PyTorch path into a buffer of its own.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=1)
def _kernels():
    """finetune.model.swiglu_triton, or None when triton is not installed."""
    try:
        from finetune.model import swiglu_triton
    except ImportError:
        return None
    return swiglu_triton


def kernels_for(t: torch.Tensor):
    """The Triton kernels' module when `t` lives on CUDA and triton is installed and not turned off, else None."""
    mode = os.environ.get("FINETUNE_TRITON", "1")
    if mode == "0" or (t.device.type != "cuda" and mode != "cpu"):
        return None
    return _kernels()


def forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u, a new tensor."""
    if (k := kernels_for(g)) is not None:
        return k.forward(g, u)
    h = F.silu(g)
    return h.mul_(u)


def backward_(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Overwrites g with d(gate) and u with d(up) for the output gradient dh; returns h = silu(g) * u."""
    if (k := kernels_for(g)) is not None:
        return k.backward_(dh, g, u)
    sg = torch.sigmoid(g)
    silu = g * sg
    d_silu = torch.addcmul(silu, silu, sg, value=-1).add_(sg)  # silu'(g) = sigmoid(g) + silu(g) (1 - sigmoid(g))
    d_silu.mul_(u)
    torch.mul(d_silu, dh, out=g)
    h = torch.mul(silu, u, out=d_silu)
    torch.mul(dh, silu, out=u)
    return h
