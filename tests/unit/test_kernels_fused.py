"""The fused functions' buffers: 4-bit weights dequantized by bitsandbytes into one persistent buffer (the same
storage call after call, the values of bitsandbytes' own dequantize_4bit); dX written over the saved input only when
the caller owns it, with the gradient unchanged; and a second backward through the buffers the backward reused refused
by autograd instead of returning wrong gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.model import dequant
from finetune.model.fused import LoraMLP, LoraProjections, Proj

HIDDEN, FFN, RANK = 64, 96, 4  # FFN: the intermediate size


def nf4(out_features: int, in_features: int, seed: int):
    import bitsandbytes as bnb

    torch.manual_seed(seed)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(
        torch.randn(out_features, in_features) * 0.05, requires_grad=False, quant_type="nf4"
    )
    layer = layer.to("cpu")  # quantizes
    layer.weight.quant_state.packing_format_for_cpu = False
    return layer


def lora(out_features: int, in_features: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(RANK, in_features, generator=gen) * 0.1).requires_grad_(), (
        torch.randn(out_features, RANK, generator=gen) * 0.1
    ).requires_grad_()


def test_4bit_weights_land_in_one_reused_buffer_with_bitsandbytes_values():
    import bitsandbytes.functional as bnbF

    gate, up = nf4(FFN, HIDDEN, 0), nf4(FFN, HIDDEN, 1)
    dequant.release()
    first = dequant.weights([gate, up], torch.float32)
    want = torch.cat([bnbF.dequantize_4bit(m.weight, m.weight.quant_state) for m in (gate, up)])
    torch.testing.assert_close(first, want, rtol=0, atol=0)
    ptr = first.data_ptr()
    again = dequant.weights([up], torch.float32)  # smaller: the same storage, no allocation
    assert again.data_ptr() == ptr
    torch.testing.assert_close(again, want[FFN:], rtol=0, atol=0)
    assert dequant.weights([gate, up], torch.float32).data_ptr() == ptr


def mlp_args(four_bit: bool):
    mods = (
        [nf4(FFN, HIDDEN, 0), nf4(FFN, HIDDEN, 1), nf4(HIDDEN, FFN, 2)]
        if four_bit
        else [
            nn.Linear(HIDDEN, FFN, bias=False),
            nn.Linear(HIDDEN, FFN, bias=False),
            nn.Linear(FFN, HIDDEN, bias=False),
        ]
    )
    ab = [t for k, (o, i) in enumerate([(FFN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]) for t in lora(o, i, 10 + k)]
    return tuple(Proj(m, 2.0) for m in mods), ab


@pytest.mark.parametrize("four_bit", [False, True])
def test_dx_over_the_input_only_when_owned_and_the_same_gradient(four_bit):
    projs, ab = mlp_args(four_bit)
    x_leaf = torch.randn(2, 5, HIDDEN, requires_grad=True)
    grads = {}
    for inplace in (False, True):
        x = x_leaf * 1.0  # a tensor of this graph, as a norm's output is
        before = x.detach().clone()
        x.register_hook(lambda d, inplace=inplace: grads.__setitem__(inplace, (d.clone(), d.data_ptr())))
        LoraMLP.apply(x, projs, inplace, *ab).square().sum().backward()
        if inplace:
            assert grads[True][1] == x.data_ptr()  # dX was written over the saved input
        else:
            torch.testing.assert_close(x.detach(), before, rtol=0, atol=0)  # the input is untouched
            assert grads[False][1] != x.data_ptr()
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-6, atol=1e-6)


def test_a_second_backward_through_the_reused_buffers_is_refused():
    projs, ab = mlp_args(False)
    x = torch.randn(2, 5, HIDDEN, requires_grad=True)
    loss = LoraMLP.apply(x, projs, False, *ab).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # autograd's own version check
        loss.backward()


def test_qkv_outputs_are_the_projections_of_one_gemm():
    qkv = [nf4(HIDDEN, HIDDEN, 20), nf4(HIDDEN // 2, HIDDEN, 21), nf4(HIDDEN // 2, HIDDEN, 22)]
    ab = [t for k, m in enumerate(qkv) for t in lora(m.weight.quant_state.shape[0], HIDDEN, 30 + k)]
    x = torch.randn(3, 7, HIDDEN)
    outs = LoraProjections.apply(x, tuple(Proj(m, 0.5) for m in qkv), False, *ab)
    for m, (a, b), y in zip(qkv, zip(ab[0::2], ab[1::2]), outs):
        want = m(x) + 0.5 * (x @ a.t()) @ b.t()
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
