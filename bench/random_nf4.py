"""Random Llama-2 weights written already quantized (NF4, double quantization), as transformers saves a bitsandbytes
4-bit model, one tensor at a time: 70B is ~37 GB on disk and never exists in bf16 (138 GB, more than the GPU
machine's disk). `from_pretrained` then loads it as it loads any pre-quantized checkpoint, through our load_base and
plain HF alike. Values: normal(0, 0.02) for embeddings and linears, ones for the norms (transformers' own init).
train_throughput.py uses it for --model 70b and for --prequantized (the CPU smoke checks it on the tiny model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def shapes(config) -> list[list[tuple[str, tuple[int, int] | tuple[int], bool]]]:
    """Per shard, (name, shape, quantized): embeddings, one shard per decoder layer, then the final norm and head."""
    h, i, kv = (
        config.hidden_size,
        config.intermediate_size,
        config.num_key_value_heads * (config.hidden_size // config.num_attention_heads),
    )
    outs = {"q_proj": h, "k_proj": kv, "v_proj": kv, "o_proj": h, "gate_proj": i, "up_proj": i, "down_proj": h}
    ins = {**{k: h for k in outs}, "down_proj": i}
    shards = [[("model.embed_tokens.weight", (config.vocab_size, h), False)]]
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shards.append(
            [(p + name + ".weight", (outs[name.split(".")[1]], ins[name.split(".")[1]]), True) for name in LINEARS]
            + [(p + "input_layernorm.weight", (h,), False), (p + "post_attention_layernorm.weight", (h,), False)]
        )
    shards.append([("model.norm.weight", (h,), False), ("lm_head.weight", (config.vocab_size, h), False)])
    return shards


def write(mcfg, tokenizer, path: Path) -> Path:
    """The pre-quantized random checkpoint of `mcfg.arch` at `path` (reused when complete)."""
    import bitsandbytes.functional as bnbF
    from safetensors.torch import save_file
    from transformers import BitsAndBytesConfig

    from finetune.model import base as model_base

    if (path / "random_nf4.json").is_file():
        return path
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model_base.llama_config(mcfg)
    config.quantization_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, mcfg.dtype),
        bnb_4bit_quant_storage=torch.uint8,
    ).to_dict()
    config.dtype = getattr(torch, mcfg.dtype)
    config.save_pretrained(tmp)
    tokenizer.save(tmp)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(dev).manual_seed(mcfg.seed)
    shards, weight_map, total = shapes(config), {}, 0
    for k, shard in enumerate(shards):
        tensors = {}
        for name, shape, quantized in shard:
            if len(shape) == 1:
                tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
                continue
            w = (torch.randn(shape, generator=gen, device=dev) * 0.02).to(torch.bfloat16)
            if quantized:
                packed, state = bnbF.quantize_4bit(
                    w, blocksize=64, compress_statistics=True, quant_type="nf4", quant_storage=torch.uint8
                )
                tensors[name] = packed.cpu()
                tensors.update({f"{name}.{key}": v.cpu() for key, v in state.as_dict(packed=True).items()})
            else:
                tensors[name] = w.cpu()
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    (tmp / "random_nf4.json").write_text(json.dumps({"arch": mcfg.name, "seed": mcfg.seed, "bytes": total}))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
