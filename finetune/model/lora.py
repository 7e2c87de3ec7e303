"""LoRA through peft: a new adapter on `lora.target_modules` (plain, or a variant: `model.variants`), or one
continued from `init_adapter`."""

from __future__ import annotations

import json
from pathlib import Path

from finetune.config import LoraConfig, ModelConfig
from finetune.model import variants


def apply_lora(base, lcfg: LoraConfig, init_adapter: str | None = None, mcfg: ModelConfig | None = None):
    """A PeftModel with trainable LoRA on `lora.target_modules`, new or continued from `init_adapter`. `mcfg` (the
    base's config) is needed by `lora.init=loftq`, which reads the checkpoint's own weights."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    if init_adapter:
        return PeftModel.from_pretrained(base, str(adapter_path(init_adapter)), is_trainable=True)
    peft_cfg = PeftLoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=list(lcfg.target_modules),
        bias=lcfg.bias,
        task_type="CAUSAL_LM",
        modules_to_save=fully_trained(lcfg),
        **variants.peft_kwargs(lcfg),
    )
    model = get_peft_model(base, peft_cfg)
    if lcfg.init in variants.CONVERTED:  # the base holds W_res now: an adapter added later from this config (TRL's
        model.peft_config["default"].init_lora_weights = True  # frozen reference copy) must not decompose it again
    if lcfg.init == "loftq":
        if mcfg is None:
            raise ValueError("lora.init=loftq reads the base checkpoint: pass its model config (mcfg)")
        variants.loftq(model, mcfg)
    return model


# LongLoRA (Chen et al. 2024): LoRA alone does not adapt a model to a much longer context; training the input
# embeddings and the norms in full beside it does (~2% of a 7B's parameters, nearly all in the embeddings).
# peft's modules_to_save matches module names by suffix: "norm" is every RMSNorm (input_layernorm,
# post_attention_layernorm and the final norm). The trained copies are saved whole in the adapter and the merge
# writes them in place of the base's (exact); trainable_token_indices would train chosen rows only.
EMBEDDINGS_AND_NORMS = ["embed_tokens", "norm"]


def fully_trained(lcfg: LoraConfig) -> list[str] | None:
    """The modules trained in full beside LoRA (peft's modules_to_save), or None."""
    return list(EMBEDDINGS_AND_NORMS) if lcfg.train_embeddings_and_norms else None


def check(cfg) -> list[str]:
    """LoRA variant combinations that cannot work, and an `init_adapter` that is missing or was trained on another
    base, found before any weight loads."""
    found = variants.problems(cfg)
    if not cfg.init_adapter:
        return found
    given = adapter_path(cfg.init_adapter)
    if (given / "adapter" / "adapter_config.json").is_file():  # the run, not its adapter/
        inner = Path(cfg.init_adapter) / "adapter"
        return found + [f"init_adapter={cfg.init_adapter} is a training run; give its adapter: init_adapter={inner}"]
    if not (given / "adapter_config.json").is_file():
        return found + [
            f"init_adapter={cfg.init_adapter}: no adapter_config.json there; point it at a run's adapter/ folder"
        ]
    return found + adapter_base_problems(given, cfg.model)


def adapter_path(init_adapter: str) -> Path:
    """`init_adapter` as a path; a leading ~ is the home folder (Hydra passes a quoted ~ through as typed)."""
    return Path(init_adapter).expanduser()


def adapter_base_problems(adapter: Path, mcfg) -> list[str]:
    """An `init_adapter` trained on another base: its base_model_name_or_path names another model, or its LoRA
    shapes do not fit `model.arch` (read from the safetensors header; no weights load)."""
    meta = json.loads((adapter / "adapter_config.json").read_text())
    theirs = Path(str(meta.get("base_model_name_or_path") or "")).name.lower()
    ours = {Path(str(mcfg.path)).name.lower(), mcfg.name.lower(), f"random-{mcfg.name}".lower()}
    fix = "train the SFT adapter on this model, or pick the model it was trained on (model=... or model.path=...)"
    if theirs and theirs not in ours:
        return [
            f"init_adapter={adapter} was trained on {meta['base_model_name_or_path']}, not on "
            f"model.path={mcfg.path}; {fix}"
        ]
    arch = mcfg.arch
    head = arch.hidden_size // arch.num_heads
    dims = {
        "q_proj": (arch.hidden_size, arch.hidden_size),
        "k_proj": (arch.hidden_size, arch.num_kv_heads * head),
        "v_proj": (arch.hidden_size, arch.num_kv_heads * head),
        "o_proj": (arch.hidden_size, arch.hidden_size),
        "gate_proj": (arch.hidden_size, arch.intermediate_size),
        "up_proj": (arch.hidden_size, arch.intermediate_size),
        "down_proj": (arch.intermediate_size, arch.hidden_size),
    }
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return [f"init_adapter={adapter}: no adapter_model.safetensors there; point it at a run's adapter/ folder"]
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a cut or foreign file
        return [
            f"init_adapter={adapter}: adapter_model.safetensors cannot be read ({type(exc).__name__}: {exc}); "
            "point it at a finished run's adapter/ folder"
        ]
    for key, shape in shapes.items():
        parts = key.split(".")
        module, layer = parts[-3], int(parts[parts.index("layers") + 1]) if "layers" in parts else 0
        want = dims.get(module)
        bad = layer >= arch.num_layers or (
            want
            and ((parts[-2] == "lora_A" and shape[1] != want[0]) or (parts[-2] == "lora_B" and shape[0] != want[1]))
        )
        if bad:
            return [
                f"init_adapter={adapter}: {key} has shape {list(shape)}, which does not fit "
                f"model={mcfg.name} (hidden {arch.hidden_size}, {arch.num_layers} layers); {fix}"
            ]
    return []
