"""Tokenizer, base model (16-bit, or 4/8-bit through bitsandbytes), and LoRA through peft."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import sentencepiece as spm
import torch

from finetune import chat_format
from finetune.config import ConfigError, LoraConfig, ModelConfig, QuantConfig, looks_local

TOKENIZER_FILES = ("tokenizer.model", "LICENSE-LLAMA2", "NOTICE", "USE_POLICY.md")


@dataclass
class Tokenizer:
    """The Llama 2 tokenizer twice: SentencePiece (`sp`, Meta-exact encoding) and Hugging Face (`hf`, for TRL,
    padding, decoding and saving). Pad is `<unk>` (id 0): distinct from EOS, so EOS stays in the labels and
    the model learns to stop, and no new embedding row is needed."""

    hf: object
    sp: spm.SentencePieceProcessor
    source: Path  # the folder holding tokenizer.model

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    def save(self, out_dir: Path) -> None:
        self.hf.save_pretrained(out_dir)
        for name in TOKENIZER_FILES:  # tokenizer.model and the Llama 2 licence files travel together
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, Path(out_dir) / name)


def tokenizer_dir(mcfg: ModelConfig) -> Path:
    """Local folder with tokenizer.model: `model.tokenizer`, else `model.path` (downloaded if a hub id)."""
    where = mcfg.tokenizer or mcfg.path
    if looks_local(where):
        return Path(where).expanduser().resolve()
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(where, "tokenizer.model", revision=mcfg.revision)).parent


def load_tokenizer(mcfg: ModelConfig) -> Tokenizer:
    from transformers import AutoTokenizer, LlamaTokenizer

    src = tokenizer_dir(mcfg)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    if (src / "tokenizer_config.json").is_file():
        hf = AutoTokenizer.from_pretrained(src)
    else:  # a bare tokenizer.model: transformers converts it (LlamaTokenizer(vocab_file=) would ignore it)
        hf = LlamaTokenizer.from_pretrained(src)
    hf.pad_token = hf.unk_token
    hf.padding_side = "right"
    hf.chat_template = chat_format.CHAT_TEMPLATE
    hf.add_bos_token, hf.add_eos_token = True, False
    return Tokenizer(hf=hf, sp=sp, source=src)


def compute_dtype(mcfg: ModelConfig) -> torch.dtype:
    """`model.dtype` on a GPU; float32 on a CPU (bf16 matmuls there are slow and not autocast by Trainer)."""
    return getattr(torch, mcfg.dtype) if torch.cuda.is_available() else torch.float32


def llama_config(mcfg: ModelConfig):
    from transformers import LlamaConfig

    a = mcfg.arch
    return LlamaConfig(hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                       num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads,
                       num_key_value_heads=a.num_kv_heads, vocab_size=a.vocab_size,
                       max_position_embeddings=a.max_position_embeddings, rms_norm_eps=a.rms_norm_eps,
                       bos_token_id=chat_format.BOS_ID, eos_token_id=chat_format.EOS_ID, pad_token_id=0,
                       tie_word_embeddings=False)


def materialize_random(mcfg: ModelConfig, tokenizer: Tokenizer) -> Path:
    """Write random-init weights of `model.arch` (seeded) to `model.path` once; later runs reuse them.

    Written to a temporary folder and renamed, under a file lock, so concurrent ranks never see half a model.
    """
    from filelock import FileLock
    from transformers import AutoModelForCausalLM

    path = Path(mcfg.path).expanduser().resolve()
    stamp = {"arch": dataclasses.asdict(mcfg.arch), "seed": mcfg.seed, "dtype": mcfg.dtype}
    marker = path / "random_init.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if marker.is_file() and json.loads(marker.read_text()) == stamp:
            return path
        if path.exists():
            shutil.rmtree(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.manual_seed(mcfg.seed)
        model = AutoModelForCausalLM.from_config(llama_config(mcfg), dtype=getattr(torch, mcfg.dtype))
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        (tmp / "random_init.json").write_text(json.dumps(stamp))
        tmp.rename(path)
    return path


def load_base(mcfg: ModelConfig, qcfg: QuantConfig, gradient_checkpointing: bool = False):
    """The base model, frozen, ready for LoRA: quantized through bitsandbytes when `quant.mode` says so."""
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(mcfg)
    sharding = launched_sharding()
    if sharding == "zero3" and qcfg.mode != "none":
        raise ConfigError([f"quant.mode={qcfg.mode} under DeepSpeed ZeRO-3 is not supported here (the 4-bit base is "
                           "loaded before deepspeed.zero.Init exists): shard QLoRA with "
                           "launch/accelerate/fsdp_qlora.yaml, or use deepspeed_zero2.yaml"])
    if sharding == "fsdp" and dtype == torch.float32 and torch.cuda.is_available():  # seen on an H200
        raise ConfigError([f"model.dtype={mcfg.dtype} under FSDP: launch/accelerate/fsdp_qlora.yaml computes in bf16 "
                           "and float32 weights then fail the first matmul (BFloat16 != float); "
                           "set model.dtype=bfloat16"])
    if sharding == "fsdp" and qcfg.mode != "none" and not qcfg.storage_dtype:
        qcfg = dataclasses.replace(qcfg, storage_dtype=mcfg.dtype)  # FSDP shards float tensors only
    kwargs = dict(dtype=dtype, revision=mcfg.revision, attn_implementation=mcfg.attn_implementation)
    if qcfg.mode != "none":
        kwargs["quantization_config"] = bnb_config(qcfg, dtype)
        if sharding != "fsdp":  # under FSDP, accelerate places and shards the weights (no device_map)
            kwargs["device_map"] = device_map()
    model = AutoModelForCausalLM.from_pretrained(mcfg.path, **kwargs)
    model.config.use_cache = False
    if qcfg.mode != "none":
        disable_cpu_weight_repacking(model)
    # peft's fp32 upcast of norms/embeddings would mix dtypes inside an FSDP unit, which FSDP cannot flatten
    if qcfg.mode != "none" and qcfg.upcast_fp32 and sharding != "fsdp":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def launched_sharding(env=os.environ) -> Optional[str]:
    """"fsdp" or "zero3" when `accelerate launch` set this process up to shard the model, else None."""
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "zero3"
    return None


def bnb_config(qcfg: QuantConfig, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if qcfg.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = getattr(torch, qcfg.storage_dtype) if qcfg.storage_dtype else torch.uint8
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=qcfg.mode,
                              bnb_4bit_use_double_quant=qcfg.double_quant, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_quant_storage=storage)


def device_map() -> dict | str:
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return "cpu"


def disable_cpu_weight_repacking(model) -> None:
    """bitsandbytes 0.50 on AVX512-BF16 CPUs repacks 4-bit weights on the first eval/no-grad forward, after
    which the packed path has no autograd formula and LoRA gradients are silently wrong (relative error 0.62,
    measured). Turning the repack off keeps training exact; tests/unit/test_qlora_grads.py guards it."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def apply_lora(base, lcfg: LoraConfig, init_adapter: Optional[str] = None):
    """A PeftModel with trainable LoRA on `lora.target_modules`, new or continued from `init_adapter`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if init_adapter:
        return PeftModel.from_pretrained(base, init_adapter, is_trainable=True)
    peft_cfg = PeftLoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                              target_modules=list(lcfg.target_modules), bias=lcfg.bias, task_type="CAUSAL_LM")
    return get_peft_model(base, peft_cfg)


def prepare_path(mcfg: ModelConfig, tokenizer: Tokenizer) -> None:
    """Resolve `model.path` in place: random weights are written once, local paths become absolute (so the
    adapter's `base_model_name_or_path` works from any directory)."""
    if mcfg.random_init:
        if not looks_local(mcfg.path):  # a hub id names the architecture; the weights go to the cache
            mcfg.path = os.path.join(os.environ.get("FINETUNE_CACHE", ".cache"), "models", f"random-{mcfg.name}")
        mcfg.path = str(materialize_random(mcfg, tokenizer))
    elif looks_local(mcfg.path):
        mcfg.path = str(Path(mcfg.path).expanduser().resolve())
