"""Frozen base weights for the fused LoRA functions, written into one persistent buffer per device and dtype.

`weights(bases, dtype)` returns W = [W_1; W_2; ...] (sum of out x in) for projections that share an input (q/k/v,
gate/up) or one W alone, as a view of that buffer: 4-bit weights are dequantized by bitsandbytes straight into their
rows (its `dequantize_4bit.out` op on CUDA; the CPU backend has no `out=` kernel, so there the result is copied in),
16-bit weights are cast into it only when their dtype differs from `dtype` (else the parameter itself is returned,
nothing copied). The buffer grows to the largest request and is then reused by every layer, forward and backward:
no allocation per call. A view is valid until the next call for the same device and dtype; the fused functions use
it at once (same stream) and never save it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BUFFERS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def is_4bit(base: torch.nn.Module) -> bool:
    return hasattr(base.weight, "quant_state") or type(base).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")


def buffer(device: torch.device, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat tensor of at least `numel` elements, the same one on every call that fits in it."""
    key = (device, dtype)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        _BUFFERS.pop(key, None)  # the old one is freed before the larger one is allocated
        buf = _BUFFERS[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel]


def release() -> None:
    """Free every buffer (the next call allocates again)."""
    _BUFFERS.clear()


def dequantize_into(weight, out: torch.Tensor) -> None:
    """bitsandbytes' 4-bit dequantization of `weight` (a Params4bit with its quant_state) into `out` (out x in)."""
    qs = weight.quant_state
    absmax = qs.absmax
    if qs.nested:
        import bitsandbytes.functional as bnbF

        absmax = bnbF.dequantize_blockwise(qs.absmax, qs.state2)
        absmax += qs.offset
        absmax = absmax.float()
    packed = weight.view(torch.uint8) if weight.dtype != torch.uint8 else weight
    args = (packed.view(-1, 1), absmax, qs.blocksize, qs.quant_type, list(qs.shape), out.dtype)
    if out.device.type == "cuda":
        torch.ops.bitsandbytes.dequantize_4bit.out(*args, out=out)
    else:  # no out= kernel registered for the CPU in bitsandbytes 0.50
        out.copy_(torch.ops.bitsandbytes.dequantize_4bit.default(*args))


def weights(bases: Sequence[torch.nn.Module], dtype: torch.dtype) -> torch.Tensor:
    """[W_1; W_2; ...] (sum of out x in) in `dtype`; see the module docstring for what it may alias."""
    ws = [b.weight for b in bases]
    if len(ws) == 1 and not is_4bit(bases[0]) and ws[0].dtype == dtype:
        return ws[0]
    shapes = [tuple(w.quant_state.shape) if is_4bit(b) else tuple(w.shape) for b, w in zip(bases, ws)]
    rows, cols = sum(s[0] for s in shapes), shapes[0][1]
    out = buffer(ws[0].device, dtype, rows * cols).view(rows, cols)
    start = 0
    for b, w, s in zip(bases, ws, shapes):
        part = out[start : start + s[0]]
        if is_4bit(b):
            dequantize_into(w, part)
        else:
            part.copy_(w)
        start += s[0]
    return out
