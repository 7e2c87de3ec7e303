"""The base model: 16-bit, or 4/8-bit through bitsandbytes; random weights of the real architecture on request."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from finetune.config import ConfigError, ModelConfig, QuantConfig, UserError, cache_root, looks_local
from finetune.data.chat_format import BOS_ID, EOS_ID
from finetune.model import rope
from finetune.runtime import dist
from finetune.runtime.cache import build_once
from finetune.runtime.dist import launched_sharding


class BaseModelError(UserError):
    """The base checkpoint cannot be had (gated, misspelled, offline): the message names model.path and the fix."""


def compute_dtype(mcfg: ModelConfig) -> torch.dtype:
    """`model.dtype` on a GPU; float32 on a CPU (bf16 matmuls there are slow and not autocast by Trainer)."""
    return getattr(torch, mcfg.dtype) if torch.cuda.is_available() else torch.float32


def llama_config(mcfg: ModelConfig):
    from transformers import LlamaConfig

    arch = mcfg.arch
    return LlamaConfig(
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.rms_norm_eps,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def materialize_random(mcfg: ModelConfig, tokenizer) -> Path:
    """Write random-init weights of `model.arch` (seeded) to `model.path` once; later runs reuse them.

    Written to a temporary folder and renamed, under a file lock, so concurrent ranks never see half a model.
    """
    from transformers import AutoModelForCausalLM

    path = Path(mcfg.path).expanduser().resolve()
    stamp = {"arch": dataclasses.asdict(mcfg.arch), "seed": mcfg.seed, "dtype": mcfg.dtype}

    def ready(p: Path) -> bool:  # the files a load reads, checked: a stamp alone once hid a folder without them
        return (
            (p / "random_init.json").is_file()
            and json.loads((p / "random_init.json").read_text()) == stamp
            and (p / "config.json").is_file()
            and weights_complete(p)
        )

    def write(tmp: Path) -> None:
        torch.manual_seed(mcfg.seed)
        model = AutoModelForCausalLM.from_config(llama_config(mcfg), dtype=getattr(torch, mcfg.dtype))
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        (tmp / "random_init.json").write_text(json.dumps(stamp))

    if dist.distributed() and not dist.is_local_main():  # one process per machine builds it, outside any
        dist.wait_for_everyone()  # sharding: under FSDP the other ranks would build the model on the meta device
    else:
        build_once(path, ready, write)
        dist.wait_for_everyone()
    if not ready(path):
        raise BaseModelError(
            f"model.path={mcfg.path}: the random-weight model at {path} is incomplete (no "
            "config.json or weights); delete that folder and rerun"
        )
    return path


def weights_complete(p: Path) -> bool:
    """A saved model's weights are all there: model.safetensors, or every shard its index names."""
    if (p / "model.safetensors").is_file():
        return True
    index = p / "model.safetensors.index.json"
    if not index.is_file():
        return False
    return all((p / shard).is_file() for shard in set(json.loads(index.read_text())["weight_map"].values()))


def load_base(mcfg: ModelConfig, qcfg: QuantConfig, gradient_checkpointing: bool = False):
    """The base model, frozen, ready for LoRA: quantized through bitsandbytes when `quant.mode` says so."""
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(mcfg)
    sharding = launched_sharding()
    if problems := launch_problems(mcfg, qcfg):  # checked before training writes anything; here for chat/export
        raise ConfigError(problems)
    if sharding == "fsdp" and qcfg.mode != "none" and not qcfg.storage_dtype:
        qcfg = dataclasses.replace(qcfg, storage_dtype=mcfg.dtype)  # FSDP shards float tensors only
    kwargs = dict(dtype=dtype, revision=mcfg.revision, attn_implementation=mcfg.attn_implementation)
    if scaled := rope.scaled_config(mcfg):  # model.rope_scaling: transformers' own RoPE parameters
        kwargs["config"] = scaled
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
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; 5.17 has the older name only
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def launch_problems(mcfg: ModelConfig, qcfg: QuantConfig) -> list[str]:
    """What the sharding `accelerate launch` set up cannot load, known before any weight loads."""
    sharding = launched_sharding()
    problems = []
    if sharding == "zero3" and qcfg.mode != "none":
        problems.append(
            f"quant.mode={qcfg.mode} under DeepSpeed ZeRO-3 is not supported here (the 4-bit base is "
            "loaded before deepspeed.zero.Init exists): shard QLoRA with "
            "launch/accelerate/fsdp_qlora.yaml, or use deepspeed_zero2.yaml"
        )
    if sharding == "fsdp" and not torch.cuda.is_available():
        problems.append(
            "FSDP (launch/accelerate/fsdp_qlora.yaml) shards the model across GPUs and this machine has "
            "none; on CPUs launch data-parallel processes with --config_file "
            "launch/accelerate/multi_gpu.yaml, or one process with python finetune/train.py"
        )
    if sharding == "fsdp" and compute_dtype(mcfg) == torch.float32 and torch.cuda.is_available():  # seen on an H200
        problems.append(
            f"model.dtype={mcfg.dtype} under FSDP: launch/accelerate/fsdp_qlora.yaml computes in bf16 "
            "and float32 weights then fail the first matmul (BFloat16 != float); "
            "set model.dtype=bfloat16"
        )
    return problems


def bnb_config(qcfg: QuantConfig, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if qcfg.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = getattr(torch, qcfg.storage_dtype) if qcfg.storage_dtype else torch.uint8
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qcfg.mode,
        bnb_4bit_use_double_quant=qcfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=storage,
    )


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


def resolved_path(mcfg: ModelConfig, tokenizer) -> str:
    """The base checkpoint `model.path` names, returned (`mcfg` is not changed): random weights are written once,
    local paths become absolute (so the adapter's `base_model_name_or_path` works from any directory), a Hub
    base's config.json is fetched (reachable, or one error)."""
    if mcfg.random_init:
        if not looks_local(mcfg.path):  # a hub id names the architecture; the weights go to the cache
            mcfg = dataclasses.replace(mcfg, path=str(cache_root() / "models" / f"random-{mcfg.name}"))
        return str(materialize_random(mcfg, tokenizer))
    if looks_local(mcfg.path):
        return str(Path(mcfg.path).expanduser().resolve())
    fetch_config(mcfg)
    return mcfg.path


def prepare_path(mcfg: ModelConfig, tokenizer) -> None:
    """`resolved_path` kept in the training process's own config (the one it loads the base from)."""
    mcfg.path = resolved_path(mcfg, tokenizer)


def fetch_config(mcfg: ModelConfig) -> None:
    """The Hub base's config.json (a few hundred bytes), fetched before anything is written: a gated, misspelled
    or unreachable base is one BaseModelError naming the fix, not a traceback after the run directory exists."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"model.path={mcfg.path}" + (f" (model.revision={mcfg.revision})" if mcfg.revision else "")
    local = "or set model.path= to a local checkpoint folder"
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if isinstance(try_to_load_from_cache(mcfg.path, "config.json", revision=mcfg.revision), str):
        return  # in the local cache: no request at all
    try:
        if not offline:  # one request without retries: a machine without network is told at once
            get_hf_file_metadata(hf_hub_url(mcfg.path, "config.json", revision=mcfg.revision), timeout=10)
        hf_hub_download(mcfg.path, "config.json", revision=mcfg.revision)
    except GatedRepoError:
        why = f"gated on the Hub; accept Meta's licence on its Hub page, run `hf auth login` with that account, {local}"
    except RepositoryNotFoundError:
        why = f"no such model on the Hub, or a private one (check the id; `hf auth login` for private ones), {local}"
    except RevisionNotFoundError:
        why = "the Hub has no such revision; give a branch, tag or commit of it"
    except HfHubHTTPError as exc:
        why = f"the Hub answered {str(exc).splitlines()[0][:200]}; try again, {local}"
    except Exception as exc:  # LocalEntryNotFoundError offline; httpx's connection errors and timeouts otherwise
        why = "HF_HUB_OFFLINE is set" if offline else f"the Hub could not be reached ({type(exc).__name__})"
        why = (
            f"not in the local Hugging Face cache and {why}; download it once with network "
            f"(`hf download {mcfg.path}`), {local}"
        )
    else:
        return
    raise BaseModelError(f"{where}: {why}")


def check(cfg) -> list[str]:
    """Problems with the model, its quantization and the launch, found before any weight loads."""
    mcfg, quant, problems = cfg.model, cfg.quant, []
    if quant.mode != "none" and (err := bitsandbytes_problem()):
        problems.append(
            f"quant.mode={quant.mode} needs bitsandbytes: {err}; install it with "
            "`pip install 'bitsandbytes>=0.50.2'` or set quant.mode=none for 16-bit LoRA"
        )
    if looks_local(mcfg.path) and not mcfg.random_init and not Path(mcfg.path).is_dir():
        problems.append(
            f"model.path={mcfg.path}: no such folder; give a local Llama 2 checkpoint folder "
            "or a hub id like meta-llama/Llama-2-7b-hf"
        )
    if mcfg.tokenizer and looks_local(mcfg.tokenizer) and not (Path(mcfg.tokenizer) / "tokenizer.model").is_file():
        problems.append(f"model.tokenizer={mcfg.tokenizer}: no tokenizer.model in that folder")
    return problems + launch_problems(mcfg, quant)


def bitsandbytes_problem() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken binary raising at import
        return f"import failed ({type(exc).__name__}: {exc})"
    return None
