"""What the planner counts from the architecture alone: each linear layer's shape, the parameter counts, and the
optimizer's bytes per trainable parameter (shared by `planner` and `methods`)."""
from __future__ import annotations

OPTIMIZER_BYTES = {
    "adamw_torch": 8, "adamw_torch_fused": 8, "adamw_torch_4bit": 1, "adamw_torch_8bit": 2, "adamw_hf": 8,
    "adamw_apex_fused": 8, "adamw_bnb_8bit": 2, "adamw_8bit": 2, "paged_adamw_32bit": 8, "paged_adamw_8bit": 2,
    "paged_adamw": 8, "lion_32bit": 4, "lion_8bit": 1, "paged_lion_32bit": 4, "paged_lion_8bit": 1,
    "adafactor": 0, "sgd": 0, "adagrad": 4, "rmsprop": 4,
}


def optimizer_bytes(optim: str) -> int:
    return OPTIMIZER_BYTES.get(optim, 8)


def linear_params(s) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one decoder layer; k/v are narrower with grouped-query attention."""
    d, kv = s.hidden, s.hidden * s.kv_heads // s.heads
    return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
            "gate_proj": (d, s.ffn), "up_proj": (d, s.ffn), "down_proj": (s.ffn, d)}


def param_counts(s) -> dict[str, int]:
    lin = linear_params(s)
    return {"layers": s.layers * sum(i * o for i, o in lin.values()),
            "embed_head": 2 * s.vocab * s.hidden,  # Llama 2 does not tie embeddings and lm_head
            "norms": (2 * s.layers + 1) * s.hidden,
            "lora": s.layers * s.lora_r * sum(i + o for m, (i, o) in lin.items() if m in s.lora_modules)}
