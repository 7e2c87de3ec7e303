"""How much memory this machine has, the one error for a memory budget larger than the memory it is spent on, and
the one line for a GPU-sized model on a machine without a GPU."""
from __future__ import annotations

import os
from typing import Optional

from finetune.config.methods import METHODS

GiB = 2**30


def ram() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def beyond(size: float, what: str, memory: float, where: str, gpu: bool) -> Optional[str]:
    """The error when a budget of `size` bytes (`what`, the setting as given) exceeds the `memory` bytes it is
    spent on (`where`: a GPU when `gpu`, else the machine's RAM), or None: a plan for memory that is not there
    would be taken at its word and fail at the first step, or never checkpoint at all."""
    if size <= memory:
        return None
    return (f"{what} ({size / GiB:,.1f} GiB) is more than {where} has ({memory / GiB:,.1f} GiB); give at most "
            f"{int(memory // GiB)}GB" + (", or auto for the GPU's free memory" if gpu else ""))


def gpu_sized(cfg, recipe: Optional[str]) -> list[str]:
    """A recipe sized for a GPU (a 7B/13B/70B base) on a machine without CUDA: one line naming the CPU recipe of the
    same method, before anything is downloaded or tokenized (a CPU would take days a step, if the base fits RAM)."""
    a, m = cfg.model.arch, cfg.model
    params = a.num_layers * (2 * a.hidden_size ** 2 * (1 + a.num_kv_heads / a.num_heads)
                             + 3 * a.hidden_size * a.intermediate_size) + 2 * a.vocab_size * a.hidden_size
    import torch

    if torch.cuda.is_available() or params < 1e9:
        return []
    kind = cfg.trainer.kind
    if METHODS[kind].conversations:  # SFT: the tiny recipe of the same quantization
        tiny = "tiny_lora" if cfg.quant.mode == "none" else "tiny_qlora"
    else:
        tiny = f"tiny_{kind}"
    what = f"recipe={recipe}" if recipe else f"model={m.name}"
    return [f"{what} is sized for a GPU ({m.name}, {params / 1e9:.1f}B parameters) and this machine has no CUDA "
            f"GPU; on this machine try recipe={tiny} (the same method on a toy Llama 2), or see which GPU it needs: "
            f"python finetune/plan.py {what}"]
