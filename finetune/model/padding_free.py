"""Padding-free batches for the preference trainers (packed DPO): every micro-batch of padded rows (the chosen and
rejected sequences of its pairs) runs through the decoder layers as one row of real tokens, with position ids that
restart at each sequence, so no compute goes to padding and no token attends across sequences (transformers builds
the per-sequence causal mask from the position ids, as for SFT packing). The decoder's output is scattered back to
the padded layout, so the LM head, the log-probs per sequence and TRL's loss per pair see the same tensors as
unpacked (TRL 1.16 turns its own `padding_free` off for DPO).

Applied with forward hooks on the loaded model's decoder instance (`LlamaModel`); no library code is patched.
Calls that pass a cache, position ids, embeddings or no 2-D attention mask (generation, eval samples) run as they are.
"""

from __future__ import annotations

import torch

HOOKED = "_finetune_padding_free"


def decoder(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def pack(module, args, kwargs):
    """Pre-hook: padded (input_ids, attention_mask) -> one row of real tokens with per-sequence position ids."""
    ids, mask = kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask")
    if (
        ids is None
        or mask is None
        or mask.dim() != 2
        or kwargs.get("position_ids") is not None
        or kwargs.get("cache") is not None
        or kwargs.get("past_key_values") is not None
        or kwargs.get("use_cache")
    ):
        module._finetune_unpack = None
        return None
    keep = mask.bool()
    positions = (mask.long().cumsum(-1) - 1)[keep]  # 0.. within each sequence (left or right padding)
    module._finetune_unpack = (keep, ids.shape)
    kwargs = {
        **kwargs,
        "input_ids": ids[keep][None],
        "attention_mask": None,
        "position_ids": positions[None],
        "use_cache": False,
    }
    return (), kwargs


def unpack(module, args, kwargs, output):
    """Forward hook: the packed row's hidden states back in the padded layout (zeros at padding)."""
    state, module._finetune_unpack = getattr(module, "_finetune_unpack", None), None
    if state is None:
        return output
    keep, shape = state
    packed = output.last_hidden_state[0]
    flat = torch.nonzero(keep.reshape(-1), as_tuple=True)[0]
    full = packed.new_zeros(shape.numel(), packed.shape[-1]).index_copy(0, flat, packed)
    output.last_hidden_state = full.view(*shape, packed.shape[-1])
    return output


def enable(model) -> str:
    """Run `model`'s decoder padding-free from now on; returns the line to print."""
    inner = decoder(model)
    if getattr(inner, HOOKED, False):
        return "padding-free: already on"
    inner.register_forward_pre_hook(pack, with_kwargs=True)
    inner.register_forward_hook(unpack, with_kwargs=True)
    setattr(inner, HOOKED, True)
    return "padding-free: each micro-batch's chosen and rejected sequences run as one row of real tokens"
