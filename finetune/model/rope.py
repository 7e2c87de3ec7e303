"""`model.rope_scaling` as transformers' own RoPE configuration: no rotary code of ours.

transformers 5 reads RoPE from `config.rope_parameters` ({"rope_type", "rope_theta", "factor", ...}; the older
`rope_scaling` key is still accepted and converted). Linear and YaRN models declare the scaled context as
`max_position_embeddings` (YaRN keeps the pretrained one in `original_max_position_embeddings`); dynamic NTK keeps
the pretrained context there, because it rescales from that length on as sequences grow past it.
"""

from __future__ import annotations

from finetune.config import ModelConfig
from finetune.config.rope import context, original_context

DEFAULT_THETA = 10000.0  # Llama 2's rope_theta
YARN_KEYS = ("beta_fast", "beta_slow", "attention_factor")


def theta_of(config: dict) -> float:
    """rope_theta of a config.json (transformers 4 kept it at the top level, 5 inside rope_parameters)."""
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta") or config.get("rope_theta") or DEFAULT_THETA)


def config_fields(mcfg: ModelConfig, theta: float = DEFAULT_THETA) -> dict:
    """The config.json fields that carry `model.rope_scaling` ({} when it is off): what the base is loaded with
    and what merged/config.json keeps."""
    r = mcfg.rope_scaling
    if not r.type:
        return {}
    params = {"rope_type": r.type, "rope_theta": theta, "factor": float(r.factor)}
    if r.type == "yarn":
        params["original_max_position_embeddings"] = original_context(mcfg)
        params.update({k: float(getattr(r, k)) for k in YARN_KEYS if getattr(r, k) is not None})
    length = original_context(mcfg) if r.type == "dynamic" else context(mcfg)
    return {"rope_parameters": params, "max_position_embeddings": length}


def scaled_config(mcfg: ModelConfig):
    """The base's transformers config with `model.rope_scaling` applied, or None when it is off."""
    if not mcfg.rope_scaling.type:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(mcfg.path, revision=mcfg.revision)
    fields = config_fields(mcfg, theta_of(config.to_dict()))
    config.max_position_embeddings = fields["max_position_embeddings"]
    config.rope_parameters = fields["rope_parameters"]
    config.validate_rope()
    return config


def scaling_of(config: dict) -> dict | None:
    """The RoPE scaling a config.json declares ({"type", "factor", "original_context", YaRN's betas}), or None."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type") or params.get("type")
    if kind in (None, "default"):
        return None
    original = params.get("original_max_position_embeddings") or (
        config["max_position_embeddings"]
        if kind == "dynamic"
        else round(config["max_position_embeddings"] / float(params["factor"]))
    )
    return {
        "type": kind,
        "factor": float(params["factor"]),
        "original_context": int(original),
        **{k: params[k] for k in YARN_KEYS if params.get(k) is not None},
    }
