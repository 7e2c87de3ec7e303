"""Merge a LoRA adapter into its base model one safetensors shard at a time, then check the merge.

Memory: only the adapter (megabytes) and the tensor being merged are held at once: each output shard is written
tensor by tensor (its header is planned from the source headers), and each source tensor is read through a
memory map opened just for it. A 70B merge needs a few GB of RAM, not 140 GB. No transformers import here.

QLoRA: the adapter was trained against NF4-quantized weights, not the 16-bit checkpoint. `base="dequantized"`
merges into the quantize-then-dequantize of every weight the 4-bit model quantized (all q/k/v/o/gate/up/down
projections, targeted or not), computed with bitsandbytes' own `quantize_4bit`/`dequantize_4bit` and the
run's quant settings, so the merged model reproduces the trained one (max |dlogits| 6e-7 on the tiny model,
against 7.9e-2 for the original weights). `base="original"` merges into the checkpoint's own weights.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from finetune.ship.adapter_file import Lora, MergeError, read_adapter  # noqa: F401 (merge.read_adapter)

# The Linear layers transformers swaps for bitsandbytes ones in a Llama (everything but lm_head).
QUANTIZED_RE = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.weight$")
FILES_FROM_BASE = ("generation_config.json",)


@dataclass
class Quant:
    """How the run quantized its base: bitsandbytes 4-bit settings and the dtype weights were quantized from."""

    quant_type: str  # nf4 | fp4
    double_quant: bool
    dtype: torch.dtype
    blocksize: int = 64  # bitsandbytes' Params4bit default, which transformers uses


@dataclass
class MergeStats:
    shards: int
    tensors: int
    merged: int
    dequantized: int
    total_bytes: int
    replaced: int = 0  # modules_to_save tensors copied from the adapter (LongLoRA's embeddings and norms)


def quantize_roundtrip(weight: torch.Tensor, quant: Quant) -> torch.Tensor:
    """The weight the 4-bit model computes with: bitsandbytes' quantize_4bit then dequantize_4bit."""
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(
        weight.to(quant.dtype).contiguous(),
        blocksize=quant.blocksize,
        compress_statistics=quant.double_quant,
        quant_type=quant.quant_type,
    )
    return bnbf.dequantize_4bit(packed, state)


def base_files(base_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files, in index order."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [base_dir / n for n in names]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise MergeError(
        f"{base_dir}: no model.safetensors or model.safetensors.index.json; the streaming merge "
        "reads safetensors checkpoints (convert .bin weights with transformers' save_pretrained)"
    )


DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


@dataclass
class Entry:
    """One output tensor, known from the source header before any data is read."""

    src: Path
    name: str
    shape: list[int]
    dtype: str  # safetensors code of the output (F32, BF16, ...)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def plan(files: list[Path], max_shard_bytes: int, out_dtype: torch.dtype | None) -> list[list[Entry]]:
    """Every tensor grouped into output shards of at most `max_shard_bytes`, from the headers alone."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                stored = sl.get_dtype()
                dtype = SAFETENSORS_DTYPES[out_dtype] if out_dtype and stored in ("F32", "BF16", "F16") else stored
                entry = Entry(path, name, list(sl.get_shape()), dtype)
                if shards[-1] and size + entry.nbytes > max_shard_bytes:
                    shards.append([])
                    size = 0
                shards[-1].append(entry)
                size += entry.nbytes
    return shards


def write_shard(path: Path, entries: list[Entry], tensor_of) -> None:
    """A safetensors file written one tensor at a time: the header (names, dtypes, shapes, offsets) is known from
    the plan, so only the tensor being written is in memory. (safetensors' save_file needs them all at once.)"""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": entry.shape,
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data to 8 bytes
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for entry in entries:
            tensor = tensor_of(entry)
            if list(tensor.shape) != entry.shape or SAFETENSORS_DTYPES.get(tensor.dtype, entry.dtype) != entry.dtype:
                raise MergeError(
                    f"{entry.name}: computed {tuple(tensor.shape)} {tensor.dtype}, planned {entry.shape} {entry.dtype}"
                )
            fh.write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))


def merge(
    base_dir: Path,
    adapter: Lora,
    out_dir: Path,
    quant: Quant | None = None,
    out_dtype: torch.dtype | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    config_fields: dict | None = None,
) -> MergeStats:
    """Write `out_dir/model-XXXXX-of-YYYYY.safetensors` + index + config: base (+ quantize roundtrip) + LoRA.

    `quant` given: every 4-bit-quantized weight goes through `quantize_roundtrip` first (base="dequantized").
    `out_dtype` None keeps each tensor's stored dtype. Peak memory: about the largest tensor, a few times.
    `config_fields` replace those of the base's config.json (the RoPE scaling the run trained with).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan(base_files(base_dir), max_shard_bytes, out_dtype)
    need, free = sum(e.nbytes for entries in shards for e in entries), shutil.disk_usage(out_dir).free
    if need > free:  # refused before a byte is written: a merge that fills the disk fails at its last shard
        raise MergeError(
            f"{out_dir.parent}: {free / 2**20:,.1f} MiB free on its disk, and the merged weights need "
            f"{need / 2**20:,.1f} MiB; free space, then run the same command again"
        )
    pending = set(adapter.pairs) | set(adapter.replaced)
    counts = {"merged": 0, "dequantized": 0, "replaced": 0}

    def tensor_of(entry: Entry) -> torch.Tensor:
        with safe_open(str(entry.src), framework="pt") as fh:  # reopened per tensor: its mapped pages are let go
            tensor = fh.get_tensor(entry.name)
        dtype = out_dtype if out_dtype and tensor.is_floating_point() else tensor.dtype
        if entry.name in adapter.replaced:  # trained in full (embeddings, norms): the adapter's tensor as it is
            pending.discard(entry.name)
            counts["replaced"] += 1
            return adapter.replaced[entry.name].to(dtype)
        if quant is not None and QUANTIZED_RE.search(entry.name):
            tensor = quantize_roundtrip(tensor, quant).float()
            counts["dequantized"] += 1
        if entry.name in adapter.pairs:
            tensor = adapter.add_to(entry.name, tensor.to(torch.float32, copy=True))
            pending.discard(entry.name)
            counts["merged"] += 1
        return tensor.to(dtype)

    weight_map = {}
    for i, entries in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out_dir / fname, entries, tensor_of)
        weight_map.update({e.name: fname for e in entries})
    if pending:
        raise MergeError(
            f"the adapter targets {len(pending)} weights the base at {base_dir} does not have "
            f"(e.g. {sorted(pending)[0]}): is the adapter for this base model?"
        )
    total = sum(e.nbytes for entries in shards for e in entries)
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    write_config(base_dir, out_dir, out_dtype, config_fields)
    return MergeStats(shards=len(shards), tensors=len(weight_map), total_bytes=total, **counts)


def write_config(base_dir: Path, out_dir: Path, out_dtype: torch.dtype | None, fields: dict | None = None) -> None:
    """config.json of the base, minus any quantization_config, with the dtype the shards now hold and `fields`.
    A RoPE scaling is written as transformers 5 spells it (`rope_parameters`) and as older readers do
    (`rope_scaling`, rope_theta at the top level)."""
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.pop("quantization_config", None)
    cfg.update(fields or {})
    if params := (fields or {}).get("rope_parameters"):
        cfg["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
        cfg["rope_theta"] = params["rope_theta"]
    if out_dtype is not None:
        cfg["dtype"] = str(out_dtype).removeprefix("torch.")
        cfg.pop("torch_dtype", None)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in FILES_FROM_BASE:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
