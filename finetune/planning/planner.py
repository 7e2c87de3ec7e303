"""Peak GPU memory per rank and tokens/s for a training setup, from the architecture alone (no weights load).

The memory model counts what PyTorch's allocator holds at the peak of a training step (what
`torch.cuda.max_memory_allocated` reports) for the Hugging Face Llama + peft LoRA + bitsandbytes + TRL path:
weights by precision, LoRA state, and the tensors autograd saves, module by module; then allocator reserve and
CUDA context for what the card must hold. Error against every recorded peak: bench/plan_calibration.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from finetune.planning import longctx, methods
from finetune.planning.shapes import OPTIMIZER_BYTES, linear_params, optimizer_bytes, param_counts  # noqa: F401

GiB = 2**30
CUDA_CONTEXT = 0.6 * GiB  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator, on every card
ALLOCATOR_RESERVE = 0.05  # cached but unusable blocks (fragmentation), as a fraction of the allocated peak

# Optimizer state bytes per trainable parameter (trainer.optim names as transformers spells them).
# 7B/13B LoRA bf16 with checkpointing peaked 3.0/6.2 GiB above the tensors counted here (H100, issue 8), while
# QLoRA with checkpointing and bf16 without it agree within 3%: kept as a measured term until it is explained.
BF16_CHECKPOINTING_EXCESS = 0.245
SHARDINGS = ("ddp", "fsdp", "zero2", "zero3")  # ddp: every rank holds everything; fsdp/zero3 shard weights too


@dataclass
class Setup:
    """One training configuration, as the planner sees it. Sizes are per rank (micro-batch per device)."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int = 32000
    quant: str = "none"  # none | nf4 | fp4 | int8
    double_quant: bool = True
    upcast_fp32: bool = True  # peft's prepare_model_for_kbit_training: embeddings, norms, lm_head in float32
    dtype_bytes: int = 2  # model.dtype: 2 (bf16/fp16) or 4 (float32)
    lora_r: int = 16
    lora_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lora_dropout: float = 0.0
    optim: str = "adamw_torch"
    micro_batch: int = 1
    max_length: int = 2048
    checkpointing: bool = True
    kept_layers: int = 0  # with checkpointing: layers that keep their activations, not recomputed
    offload_checkpoints: bool = False  # checkpointed layer inputs wait in pinned CPU memory (model/checkpointing.py)
    packing: bool = False
    liger: bool = False
    offload_activations: bool = False
    eager_attention: bool = False
    loss_head: str = "trl"  # trl: TRL's fused LM head (tiles); hf: transformers' float32 loss; liger: Liger's FLCE
    kind: str = "sft"  # sft | dpo | orpo | simpo | kto (planning/methods.py)
    dora: bool = False  # lora.use_dora: magnitudes, saved outputs and a weight-norm pass (planning/methods.py)
    precompute_ref: bool = False
    gpus: int = 1
    sharding: str = "ddp"
    attention: str = "sdpa"  # model.attn_implementation: sdpa | flash_attention_2 | eager (planning/longctx.py)
    train_embeddings_and_norms: bool = False  # LongLoRA: embeddings and norms trained in full (planning/longctx.py)

    def but(self, **changes) -> Setup:
        return dataclasses.replace(self, **changes)


@dataclass
class Estimate:
    parts: dict[str, float]  # label -> bytes; they add up to `allocated`
    allocated: float  # peak bytes in torch's allocator on one rank
    need: float  # what the card must hold: allocated + allocator reserve + CUDA context
    flops_per_token: float  # hardware FLOPs per trained token (recompute included)
    notes: list[str] = field(default_factory=list)


def weight_bits(s: Setup) -> float:
    """Bits per linear-layer weight: 4-bit NF4/FP4 blocks of 64 with an absmax each (fp32, or with double
    quantization 8-bit plus an fp32 constant per 256 blocks: 4 + 0.127 bits); int8: 8 + a float per row."""
    if s.quant in ("nf4", "fp4"):
        return 4 + (8 / 64 + 32 / (64 * 256) if s.double_quant else 32 / 64)
    if s.quant == "int8":
        return 8 + 32 / s.hidden
    return 8 * s.dtype_bytes


def layer_activation_bytes(s: Setup) -> float:
    """Bytes saved for backward per token in one decoder layer (HF Llama modules, SDPA, autocast, peft LoRA).

    res: the residual stream (float32 when peft upcasts the embeddings for k-bit training); c: compute dtype;
    o: what a quantized linear returns (its input's dtype). Each term names the tensor autograd keeps."""
    d, f, c = s.hidden, s.ffn, s.dtype_bytes
    res = 4 if (s.quant != "none" and s.upcast_fp32) else c
    o = res if s.quant != "none" else c
    norm = (res if s.liger else 4) * d  # RMSNorm keeps a float32 copy of its input (Liger: the input)
    h = res  # norm output dtype: weight (res) x input
    lin = linear_params(s)
    total = 2 * norm
    for group in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        total += c * d * (1 if h == c else len(group))  # base linear input: shared, or a cast copy each
    lora_in = {m: lin[m][0] for m in s.lora_modules}
    for m, width in lora_in.items():
        x_dtype = {"o_proj": c, "down_proj": o}.get(m, h)  # attention output: compute dtype; down: the MLP's dtype
        # peft casts a LoRA input to the float32 adapter dtype and autocast casts it back: a compute-dtype copy.
        # None when nothing needs casting: float32 compute, or peft's bitsandbytes layers (no cast under autocast)
        # given an input already in compute dtype.
        if not (x_dtype == c and (c == 4 or s.quant != "none")):
            total += c * width
        if s.lora_dropout > 0:
            total += width * (5 if c == 4 else 1)  # mask (+ the dropped-out input in float32)
    total += 5 * c * d  # SDPA keeps q, k, v (k/v repeated to all heads), out; o_proj's reshaped input
    if s.eager_attention:
        total += 2 * c * s.heads * s.max_length  # eager attention: scores and probabilities, s x s per head
    total += (2 if s.liger else 3) * o * f + c * f  # gate, up, silu(gate) (Liger: recomputed); down's input
    return total


def logits_bytes(s: Setup, tokens: int) -> float:
    """The loss buffer at its peak. TRL (SFT and DPO) projects through the LM head in tiles of 4096 tokens and
    never holds full logits: one tile in compute dtype plus the float32 gradient of the hidden states.
    transformers' own loss (plain HF): the float32 log-softmax saved by cross-entropy, the gradient nll_loss hands
    it and the gradient it returns, 12 B per token x vocab (the Trainer has dropped the logits by then).
    Liger's fused linear cross-entropy: chunks of ~1024 tokens."""
    if s.loss_head == "liger":
        return min(tokens, 1024) * s.vocab * 8
    if s.loss_head == "hf":
        return tokens * s.vocab * 12
    return min(tokens, 4096) * s.vocab * s.dtype_bytes + tokens * s.hidden * 4


def memory(s: Setup) -> Estimate:
    n = param_counts(s)
    notes: list[str] = []
    shard_w = s.gpus if s.sharding in ("fsdp", "zero3") else 1
    shard_state = s.gpus if s.sharding in ("fsdp", "zero2", "zero3") else 1
    other_bytes = 4 if (s.quant != "none" and s.upcast_fp32) else s.dtype_bytes
    parts: dict[str, float] = {}
    kind = {"nf4": "NF4", "fp4": "FP4", "int8": "int8", "none": f"{8 * s.dtype_bytes}-bit"}[s.quant]
    dq = " + double quant" if s.quant in ("nf4", "fp4") and s.double_quant else ""
    parts[f"base weights ({kind}{dq}, {weight_bits(s):.3f} bits)"] = n["layers"] * weight_bits(s) / 8 / shard_w
    parts[f"embeddings + lm_head + norms ({8 * other_bytes}-bit)"] = (
        (n["embed_head"] + n["norms"]) * other_bytes / shard_w
    )
    if shard_w > 1:  # FSDP/ZeRO-3 gathers one decoder layer at a time, and prefetches the next
        parts["gathered layers (FSDP: current + prefetched)"] = 2 * n["layers"] / s.layers * weight_bits(s) / 8
    parts[f"LoRA parameters (r={s.lora_r}, {n['lora'] / 1e6:.1f}M, float32)"] = n["lora"] * 4 / shard_state
    parts["LoRA gradients (float32)"] = n["lora"] * 4 / shard_state
    if s.sharding == "ddp" and s.gpus > 1:
        parts["DDP gradient buckets"] = n["lora"] * 4
    ob = optimizer_bytes(s.optim)
    parts[f"optimizer states ({s.optim}, {ob} B/param)"] = n["lora"] * ob / shard_state
    if s.optim not in OPTIMIZER_BYTES:
        notes.append(f"optimizer {s.optim} unknown to the planner: counted as AdamW 32-bit (8 B/param)")
    if s.optim.startswith("paged_"):
        notes.append("paged optimizer: its states can move to CPU memory under pressure")
    tokens = methods.sequences(s) * s.max_length  # pairs: chosen + rejected in one micro-batch
    layer = layer_activation_bytes(s) * tokens
    logits = logits_bytes(s, tokens)
    res = 4 if (s.quant != "none" and s.upcast_fp32) else s.dtype_bytes
    transients = {f"loss buffer ({s.loss_head} LM head, {tokens} tokens x {s.vocab} vocab)": logits}
    ckpt = s.layers - s.kept_layers if s.checkpointing else 0  # layers recomputed in backward
    where = ", offloaded" if s.offload_checkpoints else ""  # to pinned CPU memory: two on the GPU in flight
    if s.offload_activations:
        parts["activations (offloaded to CPU: two layers in flight)"] = 2 * layer
    elif ckpt:  # the rest of the layers keep their activations
        parts[f"checkpointed layer inputs ({ckpt} layers x {tokens} tokens{where})"] = (
            (min(2, ckpt) if where else ckpt) * tokens * res * s.hidden
        )
        transients["one recomputed layer (checkpointing)"] = layer
    if s.layers > ckpt and not s.offload_activations:
        parts[f"activations ({s.layers - ckpt} layers x {tokens} tokens, no checkpointing)"] = (s.layers - ckpt) * layer
    methods.add(s, parts, transients, tokens, logits_bytes(s, tokens))  # reference pass and adapter, DoRA
    longctx.add(s, parts)  # packed rows' SDPA mask, LongLoRA's embeddings and norms
    if s.quant == "none" and s.checkpointing and s.dtype_bytes == 2:  # fitted on two H100 rows; cause not found
        parts["16-bit base + checkpointing: measured excess (24.5% of base weights)"] = (
            BF16_CHECKPOINTING_EXCESS * n["layers"] * s.dtype_bytes / shard_w
        )
    label, peak = max(transients.items(), key=lambda kv: kv[1])
    parts[f"peak transient: {label}"] = peak
    allocated = sum(parts.values())
    parts[f"allocator reserve ({ALLOCATOR_RESERVE:.0%})"] = ALLOCATOR_RESERVE * allocated
    parts["CUDA context and workspaces"] = CUDA_CONTEXT
    if s.packing:
        notes.append("packing: every micro-batch is full, so this peak is reached every step")
    else:
        notes.append("padding: the peak is reached by the longest micro-batches (max_length)")
    return Estimate(parts, allocated, sum(parts.values()), flops_per_token(s), notes)


def flops_per_token(s: Setup) -> float:
    """Hardware FLOPs per trained token: frozen-base forward + input-gradient backward (4 N), LoRA forward and
    both gradients (6 N_lora), causal attention (3 x fwd), + a recomputed forward with checkpointing,
    + passes without gradients (DPO's reference, KTO's reference and KL) and DoRA's work (planning/methods.py)."""
    n = param_counts(s)
    n_mat = n["layers"] + s.vocab * s.hidden
    attn = 2 * s.layers * s.hidden * s.max_length
    f = 4 * n_mat + 3 * attn + 6 * n["lora"]
    f += (2 * n["layers"] + attn + 2 * n["lora"]) * (1 - s.kept_layers / s.layers if s.checkpointing else 0)
    return f + methods.extra_flops(s, n_mat, attn)


# Dense bf16 tensor-core peak (spec, FLOP/s) and memory (GiB, as torch reports it) of common cards.
GPUS = {
    "h100": (989.4e12, 79.6),
    "h100-pcie": (756e12, 79.6),
    "h200": (989.4e12, 139.8),
    "a100-80gb": (312e12, 79.3),
    "a100-40gb": (312e12, 39.4),
    "l40s": (362e12, 44.4),
    "a6000": (154.8e12, 47.5),
    "a10": (125e12, 22.1),
    "l4": (121e12, 22.0),
    "rtx4090": (165.2e12, 23.6),
    "rtx3090": (71e12, 23.6),
    "t4": (65e12, 14.6),
}


def gpu_named(device_name: str) -> str | None:
    """The GPUS key for a CUDA device name ('NVIDIA H100 80GB HBM3' -> h100, 'NVIDIA A100-SXM4-40GB' -> a100-40gb)."""
    name = device_name.lower().replace(" ", "")
    found = [g for g in GPUS if all(part in name for part in g.split("-"))]
    return max(found, key=lambda g: (g.count("-"), len(g)), default=None)


UTILIZATION = 0.295  # fraction of the peak the plain HF + peft stack reaches, recompute counted (H100, fitted)
DEQUANT_S_PER_PARAM = 9e-12  # bitsandbytes 4-bit dequantization per weight per pass (H100, fitted)
LIGER_SPEEDUP = 1.175  # Liger's fused kernels, measured 1.15-1.19x over these estimates (H200, 7B, 3 rows)


def tokens_per_second(s: Setup, peak_flops: float, utilization: float = UTILIZATION) -> float:
    """Trained tokens/s on one GPU: FLOPs per token at `utilization` of the card's peak, plus, for a k-bit
    base, one dequantization of every frozen weight per pass (forward, backward, recompute, reference)."""
    t = flops_per_token(s) / (utilization * peak_flops)
    if s.quant != "none":
        passes = 3 - s.kept_layers / s.layers if s.checkpointing else 2  # + recompute of checkpointed layers
        passes += methods.no_grad_passes(s)
        t += passes * param_counts(s)["layers"] * DEQUANT_S_PER_PARAM / (methods.sequences(s) * s.max_length)
    return (LIGER_SPEEDUP if s.liger else 1) / t
