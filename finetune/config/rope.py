"""The context a model trains at: its pretrained context, or that times `model.rope_scaling.factor`.

Read by the config check (`data.max_length` must fit) and by every stage that needs the scaled context (the
base load, the merge, the GGUF, the Modelfile, the model card).
"""

from __future__ import annotations

from finetune.config.choices import RopeType
from finetune.config.schema import ModelConfig


def original_context(mcfg: ModelConfig) -> int:
    """The context the base was pretrained with (Llama 2: 4096)."""
    return mcfg.rope_scaling.original_context or mcfg.arch.max_position_embeddings


def context(mcfg: ModelConfig) -> int:
    """The longest sequence the model is configured for: the original context, scaled when RoPE scaling is on."""
    scaling = mcfg.rope_scaling
    return int(original_context(mcfg) * scaling.factor) if scaling.type else original_context(mcfg)


def describe(mcfg: ModelConfig) -> str:
    """`4096` or `16384 (4096 x 4, linear RoPE scaling)`: what the error lines and the model card print."""
    scaling = mcfg.rope_scaling
    if not scaling.type:
        return str(context(mcfg))
    return f"{context(mcfg)} ({original_context(mcfg)} x {scaling.factor:g}, {scaling.type} RoPE scaling)"


def problems(mcfg: ModelConfig, max_length: int) -> list[str]:
    """A scaling that cannot work, and a `data.max_length` past the (scaled) context, each naming the fix."""
    scaling, out = mcfg.rope_scaling, []
    if scaling.type and scaling.type not in RopeType.values():  # the choice check names the spellings
        return []
    if scaling.type and not scaling.factor > 1:
        out.append(
            f"model.rope_scaling.factor={scaling.factor:g}: must be > 1 with "
            f"model.rope_scaling.type={scaling.type} "
            "(the context becomes original x factor); or set model.rope_scaling.type=null"
        )
    if not scaling.type and (scaling.factor != 1 or scaling.beta_fast or scaling.beta_slow or scaling.attention_factor):
        out.append(
            "model.rope_scaling.* is set but model.rope_scaling.type is null, so nothing scales: "
            "set model.rope_scaling.type=linear, dynamic or yarn"
        )
    if scaling.type != "yarn" and (scaling.beta_fast or scaling.beta_slow or scaling.attention_factor):
        out.append(
            "model.rope_scaling.beta_fast/beta_slow/attention_factor are YaRN's: "
            "set model.rope_scaling.type=yarn or remove them"
        )
    if scaling.original_context is not None and scaling.original_context < 1:
        out.append(
            f"model.rope_scaling.original_context={scaling.original_context}: must be >= 1 (null: "
            "model.arch.max_position_embeddings)"
        )
    elif not out and max_length > context(mcfg):
        fix = f"set data.max_length<={context(mcfg)}"
        if scaling.type:
            need = -(-max_length // original_context(mcfg))
            fix += f" or model.rope_scaling.factor>={need}"
        else:
            fix += (
                f", or extend the context: model.rope_scaling.type=linear model.rope_scaling.factor="
                f"{-(-max_length // context(mcfg))}"
            )
        where = (
            "model.arch.max_position_embeddings"
            if not scaling.type or scaling.original_context is None
            else "model.rope_scaling.original_context"
        )
        out.append(
            f"data.max_length={max_length} is longer than the model's context "
            f"({where}={original_context(mcfg)}"
            + (f" x model.rope_scaling.factor={scaling.factor:g} = {context(mcfg)}" if scaling.type else "")
            + f"); {fix}"
        )
    return out
