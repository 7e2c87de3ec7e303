"""A peft LoRA adapter folder as the streaming merge reads it: LoRA pairs, DoRA magnitudes and modules trained in
full (modules_to_save: LongLoRA's embeddings and norms), with what the merge cannot reproduce refused."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from finetune.config import UserError

LORA_KEY_RE = re.compile(r"^base_model\.model\.(.+)\.(?:lora_([AB])\.weight|lora_(magnitude)_vector)$")
SAVED_KEY_RE = re.compile(r"^base_model\.model\.((.+)\.weight)$")  # a modules_to_save tensor, trained in full


class MergeError(UserError, ValueError):
    """An adapter or base the merge cannot use, or a merge that fails verification; names the fix."""


@dataclass
class Lora:
    """The adapter as the merge needs it: base weight name -> (A, B), the scale alpha/r (or alpha/sqrt(r)), and
    DoRA's magnitude per output row where the adapter has them."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save: base weight name -> trained

    def add_to(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """weight (float32, changed in place) + scale * B @ A, without a separate delta tensor; with DoRA, each row
        then rescaled to its trained magnitude: m / ||W + s·B·A||_row · (W + s·B·A), the weight peft's DoRA layer
        computes with (its norm is taken over the input dimension, as here)."""
        a, b = self.pairs[name]
        weight = weight.addmm_(b.float(), a.float(), alpha=self.scale)
        if name in self.magnitudes:
            weight.mul_((self.magnitudes[name].float() / torch.linalg.norm(weight, dim=1))[:, None])
        return weight


def read_adapter(adapter_dir: Path) -> Lora:
    """Load a peft LoRA (or DoRA) adapter folder; refuse what `W + scale * B @ A` (DoRA: rescaled rows) would
    merge wrongly."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise MergeError(f"{adapter_dir}: peft_type={cfg.get('peft_type')}; only LoRA adapters can be merged")
    unsupported = [
        k
        for k in ("fan_in_fan_out", "lora_bias", "rank_pattern", "alpha_pattern", "trainable_token_indices")
        if cfg.get(k)
    ]
    if (init := str(cfg.get("init_lora_weights"))).startswith(("pissa", "olora", "corda", "loftq")):
        unsupported.append(f"init_lora_weights={init}")
    if unsupported:
        raise MergeError(
            f"{adapter_dir}/adapter_config.json sets {unsupported}: the streaming merge handles "
            "LoRA and DoRA on the original base (an unconverted PiSSA/OLoRA adapter belongs to a "
            "changed base); merge this adapter with peft's merge_and_unload instead"
        )
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    halves: dict[str, dict[str, torch.Tensor]] = {}
    magnitudes: dict[str, torch.Tensor] = {}
    replaced: dict[str, torch.Tensor] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            if name := saved_module_weight(key, cfg.get("modules_to_save") or []):
                replaced[name] = fh.get_tensor(key)
                continue
            m = LORA_KEY_RE.match(key)
            if not m or (m.group(3) and not cfg.get("use_dora")):
                raise MergeError(
                    f"{adapter_dir}: unexpected tensor {key} in the adapter (not a LoRA A/B matrix"
                    f"{' or a DoRA magnitude' if cfg.get('use_dora') else ''})"
                )
            if m.group(3):
                magnitudes[m.group(1) + ".weight"] = fh.get_tensor(key)
            else:
                halves.setdefault(m.group(1) + ".weight", {})[m.group(2)] = fh.get_tensor(key)
    pairs = {}
    for name, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{adapter_dir}: {name} has lora_{''.join(ab)} but not both A and B")
        pairs[name] = (ab["A"], ab["B"])
    if cfg.get("use_dora") and set(magnitudes) != set(pairs):
        raise MergeError(
            f"{adapter_dir}: a DoRA adapter needs a magnitude for every LoRA weight; "
            f"{sorted(set(pairs) ^ set(magnitudes))[0]} has one without the other"
        )
    if cfg.get("modules_to_save") and not replaced:
        raise MergeError(
            f"{adapter_dir}: adapter_config.json lists modules_to_save={cfg['modules_to_save']} but "
            "adapter_model.safetensors holds none of their weights; save the adapter again"
        )
    return Lora(pairs=pairs, scale=scale, magnitudes=magnitudes, replaced=replaced)


def saved_module_weight(key: str, modules_to_save: list[str]) -> str | None:
    """The base weight a modules_to_save tensor replaces (peft saves it without its wrapper's prefix:
    `base_model.model.model.norm.weight` -> `model.norm.weight`), or None for any other key."""
    m = SAVED_KEY_RE.match(key)
    if not m or "lora_" in key:
        return None
    return m.group(1) if any(m.group(2).endswith(target) for target in modules_to_save) else None
