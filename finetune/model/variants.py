"""LoRA variants through peft: DoRA (QDoRA over a 4-bit base), rsLoRA, and adapters initialised from the base
weights (PiSSA, OLoRA, LoftQ), with the combinations that cannot train or export exactly refused up front.

PiSSA and OLoRA move the adapter's starting point out of the base: peft sets A, B from W's singular vectors (or
its QR factors) and leaves W_res = W - s·B0·A0 in the base, so the trained adapter belongs to W_res, not to the
base a user has. The adapter as initialised is saved beside the run (`save_initial`) and the final save converts
through peft (`save_pretrained(path_initial_model_for_weight_conversion=...)`, runs/checkpoints.py) into a plain
LoRA of rank 2r whose delta s·(B·A - B0·A0) applies to the original base. Checkpoints keep the unconverted adapter
(for resume, which decomposes the base again first); adapter/ is the one to use. Once initialised, the adapter's
config says `init_lora_weights=True`: TRL builds DPO/KTO's frozen reference adapter from it, and a PiSSA config
there would decompose the residual base a second time (the policy would change; tests/unit/test_lora_variants.py).

LoftQ is meant for a 4-bit base: B·A starts as the rank-r part of W - NF4(W), so NF4(W) + s·B·A starts closer to
W than NF4(W) alone. peft's `init_lora_weights="loftq"` rewrites the base with its own quantizer (a base no user
has) and its `replace_lora_weights_loftq` runs on CUDA only and leaves out the LoRA scale; `loftq` below is the
same one-step decomposition over bitsandbytes' own NF4 weights, on any device, with the scale. The base stays
the checkpoint's NF4 weights, so the adapter needs no conversion and the dequantized merge stays exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from finetune.config import looks_local
from finetune.runtime.dist import launched_sharding

CONVERTED = ("pissa", "olora")  # initialisations that change the base: the saved adapter is converted


def peft_kwargs(lcfg) -> dict:
    """The `lora.*` variant keys as peft's LoraConfig spells them (LoftQ is applied after, by `loftq`)."""
    init = {"default": True, "loftq": True}.get(lcfg.init, lcfg.init)
    return dict(use_dora=lcfg.use_dora, use_rslora=lcfg.use_rslora, init_lora_weights=init)


def problems(cfg) -> list[str]:
    """Variant combinations that cannot train, or cannot export exactly, found before any weight loads."""
    lora, mode, found = cfg.lora, cfg.quant.mode, []
    four_bit = mode in ("nf4", "fp4")
    if lora.init in CONVERTED and mode != "none":
        why = (
            "PiSSA's SVD needs 16-bit weights (peft refuses a quantized base)"
            if lora.init == "pissa"
            else "over a quantized base peft re-quantizes W - B·A, a base no export can rebuild"
        )
        found.append(
            f"lora.init={lora.init} with quant.mode={mode}: {why}; use quant.mode=none, or lora.init=loftq "
            "for a 4-bit base"
        )
    if lora.init == "loftq" and not four_bit:
        found.append(
            f"lora.init=loftq with quant.mode={mode}: LoftQ starts B·A at the 4-bit quantization error, "
            "and this base has none to absorb; use quant.mode=nf4 (QLoRA), or lora.init=pissa for a "
            "16-bit base"
        )
    if lora.use_dora and lora.init in CONVERTED:
        found.append(
            f"lora.use_dora=true with lora.init={lora.init}: peft converts the trained adapter to a plain "
            "LoRA on the original base from A and B alone, and DoRA's magnitudes are no such delta; "
            "drop one of them"
        )
    if cfg.init_adapter and lora.init != "default":
        found.append(
            f"lora.init={lora.init} with init_adapter={cfg.init_adapter}: an initialisation makes a new "
            "adapter, init_adapter continues a trained one (with its own settings); drop one of them"
        )
    sharding = launched_sharding()
    if lora.init in CONVERTED and sharding in ("fsdp", "zero3"):
        found.append(
            f"lora.init={lora.init} under {sharding}: the adapter is converted at save from the whole "
            "adapter on one process, which this sharding splits; launch with DDP or DeepSpeed ZeRO-2"
        )
    if lora.init == "loftq" and sharding == "fsdp":
        found.append(
            "lora.init=loftq under fsdp: not checked there (FSDP stores the 4-bit weights as bf16 to shard "
            "them, and LoftQ reads them before sharding); launch with DDP, or drop lora.init"
        )
    return found


def save_initial(peft_model, folder: Path, main: bool) -> None:
    """The adapter as PiSSA/OLoRA initialised it (rank 0 writes), which the final save converts against."""
    peft_model.save_pretrained(str(folder), selected_adapters=["default"], is_main_process=main)


def weight_files(mcfg) -> dict[str, Path]:
    """Base tensor name -> the safetensors file holding it, from the local folder or the hub cache."""
    folder = Path(mcfg.path)
    if not looks_local(mcfg.path):
        from huggingface_hub import snapshot_download  # from_pretrained has just put it in the cache

        folder = Path(
            snapshot_download(
                mcfg.path, revision=mcfg.revision, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]
            )
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {k: folder / "model.safetensors" for k in fh.keys()}


@torch.no_grad()
def loftq(peft_model, mcfg, adapter: str = "default") -> int:
    """LoftQ over the 4-bit base as loaded: for every LoRA layer on a bitsandbytes 4-bit weight, s·B·A = the best
    rank-r approximation of W - dequant(NF4(W)) (W: the checkpoint's weight, read one tensor at a time). Returns
    the number of layers initialised."""
    import bitsandbytes.functional as bnbf
    from peft.tuners.lora import LoraLayer
    from safetensors import safe_open

    files, done = weight_files(mcfg), 0
    for name, module in peft_model.named_modules():
        base = module.get_base_layer() if isinstance(module, LoraLayer) else None
        state = getattr(getattr(base, "weight", None), "quant_state", None)
        if state is None or adapter not in module.lora_A:
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        with safe_open(str(files[key]), "pt") as fh:
            weight = fh.get_tensor(key)
        quantized = bnbf.dequantize_4bit(base.weight.data, state).float()
        U, S, Vh = torch.linalg.svd(weight.to(quantized.device, torch.float32) - quantized, full_matrices=False)
        r, scale = module.r[adapter], module.scaling[adapter]
        root = (S[:r] / scale).sqrt()
        module.lora_A[adapter].weight.copy_(root[:, None] * Vh[:r])
        module.lora_B[adapter].weight.copy_(U[:, :r] * root)
        done += 1
    return done
