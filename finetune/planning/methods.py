"""What each trainer kind and LoRA variant adds to the plan (`planner.memory`, `flops_per_token`): sequences per
micro-batch, passes without gradients, DPO/KTO's frozen reference adapter (each method's record in
config.methods), and DoRA's magnitudes, saved outputs and weight-norm pass. Counted from peft's and TRL's code
paths (peft 0.21 `tuners/lora/dora.py`, TRL 1.16):

- pairs (DPO, ORPO, SimPO): chosen and rejected sequences in one micro-batch; KTO: one answer per sequence.
- passes without gradients: DPO's reference (none when precomputed); KTO's reference over the answers and over
  the mismatched KL sequences, and the policy over the KL sequences; ORPO and SimPO: none (no reference at all).
- DoRA, per target layer: the magnitude vector (out_features, trained); autograd keeps the base output and the
  scaled LoRA output (tokens x out_features each) for the magnitude's gradient; every forward builds B·A as a
  dense in x out matrix through an in x in identity, and the norm of W + s·B·A; with lora.dropout > 0 the base
  matmul is redone on the dropped-out input, which for a 4-bit base keeps the dequantized weight for backward.
"""

from __future__ import annotations

from finetune.config.methods import METHODS
from finetune.planning.shapes import linear_params, optimizer_bytes, param_counts


def sequences(s) -> int:
    """Sequences in one micro-batch."""
    return METHODS[s.kind].sequences * s.micro_batch


def no_grad_passes(s) -> int:
    """Forward passes without gradients per step, besides the policy's own."""
    m = METHODS[s.kind]
    return 0 if m.precomputable and s.precompute_ref else m.no_grad_passes


def targets(s) -> dict[str, tuple[int, int]]:
    return {m: io for m, io in linear_params(s).items() if m in s.lora_modules}


def add(s, parts: dict, transients: dict, tokens: int, lm_head_bytes: float) -> None:
    """Add the kind's and the variant's memory to `parts` (held at the peak) and `transients` (the largest counts)."""
    c, shard = s.dtype_bytes, s.gpus if s.sharding in ("fsdp", "zero2", "zero3") else 1
    if METHODS[s.kind].reference:  # TRL copies the starting adapter into a frozen "ref" adapter on the same base
        parts["reference adapter (frozen copy of the starting LoRA)"] = param_counts(s)["lora"] * 4 / shard
    if no_grad_passes(s):
        transients[f"reference forward ({s.kind.upper()}, no grad): one layer's intermediates + LM head tiles"] = (
            tokens * (3 * s.ffn + 2 * s.hidden) * c + lm_head_bytes
        )
    if not s.dora:
        return
    outs = sum(o for _, o in targets(s).values())
    parts[f"DoRA magnitudes ({s.layers * outs / 1e6:.2f}M, float32, with gradients and optimizer states)"] = (
        s.layers * outs * (8 + optimizer_bytes(s.optim)) / shard
    )
    per_layer = 2 * outs * c * tokens  # the base output and the scaled LoRA output, kept for the magnitudes
    if s.lora_dropout > 0 and s.quant != "none":  # the dequantized weight, kept by the redone base matmul
        per_layer += sum(i * o for i, o in targets(s).values()) * c
    ckpt = s.layers - s.kept_layers if s.checkpointing else 0
    kept = 2 if s.offload_activations else s.layers - ckpt
    if kept:
        parts[f"DoRA saved outputs ({kept} layers)"] = kept * per_layer
    if ckpt and "one recomputed layer (checkpointing)" in transients:
        transients["one recomputed layer (checkpointing)"] += per_layer
    i, o = max(targets(s).values(), key=lambda io: io[0] * (io[0] + 3 * io[1]))
    transients["DoRA weight norm: B·A through an identity, W (dequantized), W + s·B·A"] = (i * i + 3 * i * o) * c


def extra_flops(s, n_mat: float, attn: float) -> float:
    """FLOPs per trained token beyond the policy's forward and backward: passes without gradients, and DoRA's."""
    f = no_grad_passes(s) * (2 * n_mat + attn)
    if s.dora:
        layers = targets(s).values()
        passes = 2 if s.checkpointing else 1  # the weight norm is rebuilt in every forward, recompute included
        f += (
            passes
            * s.layers
            * sum(2 * i * i * s.lora_r + 2 * i * s.lora_r * o for i, o in layers)
            / (sequences(s) * s.max_length)
        )
        if s.lora_dropout > 0:  # the base matmul again on the dropped-out input, and its input gradient
            f += 4 * s.layers * sum(i * o for i, o in layers)
    return f
