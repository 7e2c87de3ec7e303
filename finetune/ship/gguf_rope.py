"""RoPE scaling in a GGUF, as llama.cpp reads it: `llama.rope.scaling.type`, `.factor`, `.original_context_length`
(and the context length itself, written by gguf.py from config.json's scaled max_position_embeddings).

llama.cpp implements linear and YaRN scaling; it has no dynamic NTK, computes YaRN's attention temperature from
the factor (0.1 ln f + 1) times `rope.scaling.attn_factor`, and keeps YaRN's betas at 32 and 1 for Llama. What it
cannot reproduce is refused before anything is written, with the fix.
"""

from __future__ import annotations

import math

from finetune.model import rope

YARN_DEFAULT_BETAS = {"beta_fast": 32.0, "beta_slow": 1.0}


def problems(scaling: dict | None) -> list[str]:
    """What llama.cpp cannot run as trained, for the scaling `rope.scaling_of` read from a config."""
    if not scaling:
        return []
    if scaling["type"] not in ("linear", "yarn"):
        return [
            f"model.rope_scaling.type={scaling['type']}: llama.cpp has no {scaling['type']} RoPE scaling, so "
            "a GGUF would not compute what was trained; export safetensors (format=safetensors merge=true), "
            "or train with model.rope_scaling.type=linear or yarn"
        ]
    odd = [f"{k}={scaling[k]:g}" for k, v in YARN_DEFAULT_BETAS.items() if scaling.get(k, v) != v]
    if odd:
        return [
            f"model.rope_scaling.{', '.join(odd)}: llama.cpp runs Llama's YaRN with beta_fast=32 and "
            "beta_slow=1 only; export safetensors, or train with the default betas"
        ]
    return []


def check(config: dict) -> list[str]:
    """Why the scaling merged/config.json declares cannot go into a GGUF (empty: it can, or there is none)."""
    scaling = rope.scaling_of(config)
    return problems(scaling) if scaling else []


def add(writer, config: dict) -> dict | None:
    """Write the scaling merged/config.json declares into the GGUF header (`check` it first); the scaling (or
    None)."""
    import gguf

    scaling = rope.scaling_of(config)
    if not scaling:
        return None
    factor = scaling["factor"]
    kind = gguf.RopeScalingType.LINEAR if scaling["type"] == "linear" else gguf.RopeScalingType.YARN
    writer.add_rope_scaling_type(kind)
    writer.add_rope_scaling_factor(factor)
    writer.add_rope_scaling_orig_ctx_len(scaling["original_context"])
    writer.add_rope_scaling_finetuned(True)
    if kind == gguf.RopeScalingType.YARN and scaling.get("attention_factor") is not None:
        # llama.cpp multiplies its own 0.1 ln(f) + 1 by attn_factor: the ratio gives transformers' value
        writer.add_rope_scaling_attn_factors(scaling["attention_factor"] / (0.1 * math.log(factor) + 1))
    return scaling
