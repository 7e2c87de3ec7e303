"""How much memory this machine has, the one error for a memory budget larger than the memory it is spent on, the
Llama 2 parameter count from the architecture alone (the planner's too), and the one line for a GPU-sized model on
a machine without a GPU."""

from __future__ import annotations

import os

from finetune.config.methods import METHODS

GiB = 2**30


def ram() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def beyond(size: float, what: str, memory: float, where: str, gpu: bool) -> str | None:
    """The error when a budget of `size` bytes (`what`, the setting as given) exceeds the `memory` bytes it is
    spent on (`where`: a GPU when `gpu`, else the machine's RAM), or None: a plan for memory that is not there
    would be taken at its word and fail at the first step, or never checkpoint at all."""
    if size <= memory:
        return None
    return (
        f"{what} ({size / GiB:,.1f} GiB) is more than {where} has ({memory / GiB:,.1f} GiB); give at most "
        f"{int(memory // GiB)}GB" + (", or auto for the GPU's free memory" if gpu else "")
    )


def linear_shapes(hidden: int, ffn: int, heads: int, kv_heads: int) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one Llama 2 decoder layer; k/v are narrower with grouped-query attention."""
    kv = hidden * kv_heads // heads
    return {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, ffn),
        "up_proj": (hidden, ffn),
        "down_proj": (ffn, hidden),
    }


def base_params(hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict[str, int]:
    """A Llama 2 base's parameters by part: the decoder layers' linears, embeddings + lm_head, the RMSNorms."""
    linears = linear_shapes(hidden, ffn, heads, kv_heads)
    return {
        "layers": layers * sum(i * o for i, o in linears.values()),
        "embed_head": 2 * vocab * hidden,  # Llama 2 does not tie embeddings and lm_head
        "norms": (2 * layers + 1) * hidden,
    }


def gpu_sized(cfg, recipe: str | None) -> list[str]:
    """A recipe sized for a GPU (a 7B/13B/70B base) on a machine without CUDA: one line naming the CPU recipe of the
    same method, before anything is downloaded or tokenized (a CPU would take days a step, if the base fits RAM)."""
    model, arch = cfg.model, cfg.model.arch
    params = sum(
        base_params(
            arch.hidden_size,
            arch.intermediate_size,
            arch.num_layers,
            arch.num_heads,
            arch.num_kv_heads,
            arch.vocab_size,
        ).values()
    )
    import torch

    if torch.cuda.is_available() or params < 1e9:
        return []
    kind = cfg.trainer.kind
    if METHODS[kind].conversations:  # SFT: the tiny recipe of the same quantization
        tiny = "tiny_lora" if cfg.quant.mode == "none" else "tiny_qlora"
    else:
        tiny = f"tiny_{kind}"
    what = f"recipe={recipe}" if recipe else f"model={model.name}"
    return [
        f"{what} is sized for a GPU ({model.name}, {params / 1e9:.1f}B parameters) and this machine has no CUDA "
        f"GPU; on this machine try recipe={tiny} (the same method on a toy Llama 2), or see which GPU it needs: "
        f"python finetune/plan.py {what}"
    ]
