"""What the planner counts from the architecture alone: each linear layer's shape, the parameter counts, and the
optimizer's bytes per trainable parameter (shared by `planner` and `methods`)."""

from __future__ import annotations

from finetune.runtime.memory import base_params, linear_shapes

OPTIMIZER_BYTES = {
    "adamw_torch": 8,
    "adamw_torch_fused": 8,
    "adamw_torch_4bit": 1,
    "adamw_torch_8bit": 2,
    "adamw_hf": 8,
    "adamw_apex_fused": 8,
    "adamw_bnb_8bit": 2,
    "adamw_8bit": 2,
    "paged_adamw_32bit": 8,
    "paged_adamw_8bit": 2,
    "paged_adamw": 8,
    "lion_32bit": 4,
    "lion_8bit": 1,
    "paged_lion_32bit": 4,
    "paged_lion_8bit": 1,
    "adafactor": 0,
    "sgd": 0,
    "adagrad": 4,
    "rmsprop": 4,
}


def optimizer_bytes(optim: str) -> int:
    return OPTIMIZER_BYTES.get(optim, 8)


def linear_params(setup) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one decoder layer of a planner `Setup`."""
    return linear_shapes(setup.hidden, setup.ffn, setup.heads, setup.kv_heads)


def param_counts(setup) -> dict[str, int]:
    """The base's parameters by part (layers, embed_head, norms) and the LoRA parameters the setup trains."""
    linears = linear_params(setup)
    lora = setup.layers * setup.lora_r * sum(i + o for name, (i, o) in linears.items() if name in setup.lora_modules)
    return {
        **base_params(setup.hidden, setup.ffn, setup.layers, setup.heads, setup.kv_heads, setup.vocab),
        "lora": lora,
    }
