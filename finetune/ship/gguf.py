"""merged/ -> one GGUF file for llama.cpp and Ollama, written with the `gguf` package (llama.cpp's own writer).

Streamed like the merge: the header (hyperparameters, vocabulary, chat template, every tensor's name, type and
size) is planned from the safetensors headers, then each tensor is read through a memory map, converted (Q/K
rows permuted to llama.cpp's rotary layout, as llama.cpp's convert_hf_to_gguf.py does), quantized and written
before the next one is read.

Types: the `gguf` package quantizes f32, f16, bf16, q8_0, q5_1, q5_0, q4_1 and q4_0 in Python (PY_TYPES).
K-quants (q6_k, q5_k_m, q4_k_m, q3_k_m, q2_k, ...) have no Python quantizer in the package, so they are
written as a lossless GGUF first and quantized by llama.cpp's own quantizer (`llama_model_quantize` of the
llama.cpp that llama-cpp-python builds), exactly what `llama-quantize` does. Not offered: the ternary TQ1_0/
TQ2_0 (for BitNet-trained weights; a Llama 2 loses its language), MXFP4/NVFP4 (for checkpoints trained or
shipped in those formats) and the IQ types (need an importance matrix from calibration data).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from finetune.config import UserError
from finetune.data import chat_format
from finetune.ship import gguf_rope

PY_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
K_TYPES = {
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M",
    "q5_k_s": "Q5_K_S",
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q3_k_l": "Q3_K_L",
    "q3_k_m": "Q3_K_M",
    "q3_k_s": "Q3_K_S",
    "q2_k": "Q2_K",
}
TYPES = (*PY_TYPES, *K_TYPES)
# Below 8 bits the output projection is written in q8_0 (llama.cpp's quantizer keeps it at 6 bits or more too):
# it maps every hidden state to the whole vocabulary and costs little.
OUTPUT_TYPE_BELOW_8_BITS = "q8_0"
# The gguf writer's notices ("This GGUF file is for Little Endian only", "Writing the following files: ...partial")
# say nothing a user acts on; its warnings stay.
logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
FALLBACK = re.compile(r"ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\) -> falling back to\s+(\w+)")


class GGUFError(UserError, ValueError):
    """A merged folder the GGUF writer cannot convert, or a GGUF that fails verification; names the fix."""


@dataclass
class Planned:
    src: Path
    hf_name: str
    name: str  # GGUF tensor name (blk.0.attn_q.weight)
    shape: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType


def bits(gtype: str) -> int:
    """Nominal bits per weight of a type name (f16 -> 16, q4_k_m -> 4)."""
    return {"f32": 32, "f16": 16, "bf16": 16}.get(gtype) or int(gtype[1])


def lossless_source_type(merged_dtype: str) -> str:
    """The type that stores merged weights unchanged (the input of llama.cpp's K-quantizer)."""
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(merged_dtype, "f32")


def ggml_type(gtype: str):
    import gguf

    return gguf.GGMLQuantizationType[gtype.upper()]


def file_type(gtype: str):
    import gguf

    named = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    return named[gtype] if gtype in named else gguf.LlamaFileType[f"MOSTLY_{gtype.upper()}"]


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_type(name: str, shape: tuple[int, ...], gtype: str):
    """1-D tensors (norms) stay f32, as llama.cpp writes them; the output projection keeps 8 bits; a row length
    the type's block does not divide falls back to f16 (as convert_hf_to_gguf.py does)."""
    import gguf

    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    if name == "output.weight" and bits(gtype) < 8:
        gtype = OUTPUT_TYPE_BELOW_8_BITS
    qtype = ggml_type(gtype)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def plan(merged: Path, gtype: str) -> tuple[list[Planned], dict]:
    """Every tensor of merged/ with its GGUF name and type, from the safetensors headers; and config.json."""
    import gguf

    cfg = json.loads((merged / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise GGUFError(f"{merged}/config.json: model_type={cfg.get('model_type')}; the GGUF export writes Llama 2")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    index = json.loads((merged / "model.safetensors.index.json").read_text())["weight_map"]
    planned = []
    for hf_name, fname in index.items():
        if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp from rope.freq_base
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"{merged}/{fname}: tensor {hf_name} has no llama.cpp name; is this a Llama 2 model?")
        with safe_open(str(merged / fname), framework="pt") as fh:
            shape = tuple(fh.get_slice(hf_name).get_shape())
        planned.append(Planned(merged / fname, hf_name, name, shape, tensor_type(name, shape, gtype)))
    return planned, cfg


def tensor_bytes(t: torch.Tensor, p: Planned, cfg: dict) -> np.ndarray:
    """The tensor as the bytes (or float array) GGUF stores: permuted if Q/K, then quantized."""
    import gguf

    if p.name.endswith("attn_q.weight"):
        t = permute(t, cfg["num_attention_heads"])
    elif p.name.endswith("attn_k.weight"):
        t = permute(t, cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    return gguf.quants.quantize(t.float().numpy(), p.qtype)


def add_metadata(writer, cfg: dict, tokenizer_model: Path, name: str, gtype: str, licence: str) -> None:
    """Llama 2 hyperparameters, the SentencePiece vocabulary (pieces, scores, types), special ids, template."""
    import gguf
    import sentencepiece as spm

    writer.add_name(name)
    writer.add_license(licence)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    heads = cfg["num_attention_heads"]
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    writer.add_rope_freq_base(
        float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    )
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if found := gguf_rope.check(cfg):  # a scaling llama.cpp cannot run (dynamic NTK, other YaRN betas)
        raise GGUFError(found[0])
    gguf_rope.add(writer, cfg)  # the RoPE scaling the run trained with (type, factor, original context)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(file_type(gtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    if sp.get_piece_size() != cfg["vocab_size"]:
        raise GGUFError(
            f"{tokenizer_model} has {sp.get_piece_size()} pieces but config.json vocab_size is "
            f"{cfg['vocab_size']}; the GGUF needs the tokenizer the model was trained with"
        )
    kinds = gguf.TokenType
    types = [
        kinds.UNKNOWN
        if sp.is_unknown(i)
        else kinds.CONTROL
        if sp.is_control(i)
        else kinds.BYTE
        if sp.is_byte(i)
        else kinds.NORMAL
        for i in range(sp.get_piece_size())
    ]
    writer.add_tokenizer_model("llama")  # SentencePiece BPE with scores: llama.cpp's SPM tokenizer
    writer.add_tokenizer_pre("default")
    writer.add_token_list([sp.id_to_piece(i).encode() for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_pad_token_id(sp.unk_id())  # as trained: pad is <unk>, never EOS
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)  # SentencePiece's dummy prefix: "▁" after every special token
    writer.add_chat_template(chat_format.CHAT_TEMPLATE)


def write(merged: Path, out: Path, gtype: str, name: str, licence: str = "llama2") -> dict:
    """Write `out` (a GGUF of `gtype` from PY_TYPES) tensor by tensor; returns {"tensors", "bytes", "types"}."""
    import gguf

    planned, cfg = plan(merged, gtype)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_metadata(writer, cfg, merged / "tokenizer.model", name, gtype, licence)
    for p in planned:  # every type as bytes: the writer turns the byte shape back into the element shape
        byte_shape = gguf.quants.quant_shape_to_byte_shape(p.shape, p.qtype)
        writer.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=p.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict[str, int] = {}
    for p in planned:
        with safe_open(str(p.src), framework="pt") as fh:  # reopened per tensor, like the merge
            data = tensor_bytes(fh.get_tensor(p.hf_name), p, cfg)
        writer.write_tensor_data(data)
        counts[p.qtype.name] = counts.get(p.qtype.name, 0) + 1
    writer.close()
    return {"tensors": len(planned), "bytes": out.stat().st_size, "types": counts}


def k_quantize(src: Path, out: Path, gtype: str, threads: int = 0) -> str:
    """llama.cpp's own quantizer (what `llama-quantize` runs) from a lossless GGUF to a K-quant type. Its log (a
    line per tensor and one per fallback) is kept, not printed; returns one line on the fallbacks, or ""."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []
    keep = llama_cpp.llama_log_callback(lambda level, text, data: lines.append(text.decode(errors="replace")))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{K_TYPES[gtype]}")
    params.nthread = threads
    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    finally:  # llama-cpp-python's own logger back (it follows Llama(verbose=...))
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0 or not out.is_file():
        errors = [line.strip() for line in lines if "error" in line.lower()][-3:]
        raise GGUFError(
            f"llama.cpp's quantizer failed ({rc}) turning {src.name} into {gtype}"
            + (f": {' / '.join(errors)}" if errors else "")
        )
    return fallback_note(lines, gtype)


def fallback_note(log: list[str], gtype: str) -> str:
    """llama.cpp's per-tensor fallback warnings as one line: which row lengths, which types instead."""
    found = [m.groups() for m in map(FALLBACK.search, "".join(log).splitlines()) if m]
    if not found:
        return ""
    cols = sorted({int(c) for c, _, _, _ in found})
    used = sorted({f for _, _, _, f in found})
    return (
        f"{len(found)} tensors with rows of {', '.join(map(str, cols))} values, which a {gtype} block of "
        f"{found[0][1]} does not divide, were quantized as {'/'.join(used)} instead (llama.cpp's fallback, as "
        "llama-quantize does; the rows of Llama 2 7B to 70B all divide)"
    )
