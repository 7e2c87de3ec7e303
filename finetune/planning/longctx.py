"""What training past a few thousand tokens adds to the plan, and the verdict on common cards.

- Activations grow linearly with length (counted per token in `planner.layer_activation_bytes`); SDPA and
  flash attention keep no s x s scores (eager attention does: `eager_attention`).
- Packing under SDPA: transformers turns the restarting position ids of a packed row into a block-causal
  boolean mask of s x s per row (masking_utils.find_packed_sequence_indices), built once per forward and held
  through backward: 256 MiB at 16k, 1 GiB at 32k. flash_attention_2 runs packed rows as variable-length
  sequences with no mask.
- LongLoRA (`lora.train_embeddings_and_norms`): peft's modules_to_save keeps a trainable copy of the input
  embeddings and every norm, with its gradient and optimizer states (131M parameters on 7B, 164M on 13B).
"""

from __future__ import annotations

from finetune.planning import methods
from finetune.planning.shapes import optimizer_bytes, param_counts

GiB = 2**30
# The cards a long-context plan is judged against: GiB as torch reports them (planner.GPUS rtx4090, a6000, h100).
CARDS = {"24 GB": 23.6, "48 GB": 47.5, "80 GB": 79.6}


def mask_bytes(s) -> float:
    """The packed rows' block-causal mask under SDPA (one byte per query x key), 0 otherwise."""
    return methods.sequences(s) * s.max_length**2 if s.packing and s.attention == "sdpa" else 0.0


def full_params(s) -> int:
    """Parameters trained in full beside LoRA: the input embeddings and the norms (LongLoRA), else 0."""
    return (s.vocab * s.hidden + param_counts(s)["norms"]) if s.train_embeddings_and_norms else 0


def add(s, parts: dict) -> None:
    """Add the long-context terms to `parts` (tensors held at the peak)."""
    shard = s.gpus if s.sharding in ("fsdp", "zero2", "zero3") else 1
    if mask := mask_bytes(s):
        parts["attention mask (packed rows, SDPA: s x s bytes)"] = mask
    if n := full_params(s):
        weight = 4 if (s.quant != "none" and s.upcast_fp32) else s.dtype_bytes
        parts[f"LongLoRA embeddings + norms ({n / 1e6:.0f}M, trained in full)"] = (
            n * (2 * weight + optimizer_bytes(s.optim)) / shard
        )


def card_lines(s, need_of, fits_with) -> list[str]:
    """One line per common card: fits or not, else the first change that fits it (checkpointed inputs offloaded
    to CPU memory, flash attention for packed rows, both), else the longest max_length that fits (multiples of
    1024). `need_of(setup)` is the planner's need in bytes; `fits_with(setup, bytes)` its verdict."""
    changes = [
        (
            "trainer.memory_budget={gb}GB (offloads checkpointed layer inputs)",
            dict(checkpointing=True, offload_checkpoints=True),
        )
    ]
    if mask_bytes(s):
        changes += [
            ("model.attn_implementation=flash_attention_2", dict(attention="flash_attention_2")),
            (
                "trainer.memory_budget={gb}GB model.attn_implementation=flash_attention_2",
                dict(checkpointing=True, offload_checkpoints=True, attention="flash_attention_2"),
            ),
        ]
    out = []
    for name, gib in CARDS.items():
        size = gib * GiB
        if fits_with(s, size):
            out.append(f"  {name}: fits ({need_of(s) / GiB:.1f} of {gib} GiB)")
            continue
        fix = next((label.format(gb=int(gib)) for label, change in changes if fits_with(s.but(**change), size)), None)
        if fix is None:
            longest = next(
                (n for n in range(s.max_length - 1024, 1023, -1024) if fits_with(s.but(max_length=n), size)), None
            )
            fix = f"data.max_length={longest}" if longest else "nothing on one GPU; shard it with FSDP"
        out.append(f"  {name}: does not fit ({need_of(s) / GiB:.1f} of {gib} GiB); fits with {fix}")
    return out
