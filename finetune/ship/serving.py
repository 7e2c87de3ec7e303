"""Serving the folders as they are: vLLM and TGI read adapter/ and merged/ directly. What they accept, checked.

vLLM serves LoRA adapters only up to `--max-lora-rank` (default 16), which must be one of VLLM_LORA_RANKS, and
only plain LoRA on the linear layers (no DoRA, no modules_to_save); TGI loads the same peft folders with
`--lora-adapters`. Anything else is a warning at export, with the command that works (or: serve merged/).
"""

from __future__ import annotations

import json
from pathlib import Path

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def vllm_max_lora_rank(r: int) -> int | None:
    """The `--max-lora-rank` vLLM needs for rank `r`: the smallest value it accepts that is >= r (None: none)."""
    return next((v for v in VLLM_LORA_RANKS if v >= r), None)


def adapter_warnings(adapter_dir: Path) -> list[str]:
    """What keeps vLLM from serving this adapter as it is (empty: it serves with `vllm_command`)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    ranks = [cfg["r"], *(cfg.get("rank_pattern") or {}).values()]
    r = max(ranks)
    found = []
    if vllm_max_lora_rank(r) is None:
        found.append(
            f"LoRA rank {r} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]}): vLLM "
            "cannot serve this adapter; serve merged/ instead (export.py merge=true)"
        )
    elif r > VLLM_DEFAULT_MAX_LORA_RANK:
        found.append(
            f"LoRA rank {r} is above vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_LORA_RANK}: start "
            f"vLLM with --max-lora-rank {vllm_max_lora_rank(r)}"
        )
    if cfg.get("use_dora"):
        found.append("DoRA adapters are not served by vLLM's LoRA path; serve merged/ instead")
    if cfg.get("modules_to_save"):
        found.append(
            f"modules_to_save={cfg['modules_to_save']}: vLLM's LoRA path serves LoRA matrices only; "
            "serve merged/ instead"
        )
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if extra := sorted(set(targets) - VLLM_LORA_TARGETS):
        found.append(
            f"target_modules {extra} are outside vLLM's Llama LoRA layers "
            f"({', '.join(sorted(VLLM_LORA_TARGETS))}); serve merged/ instead"
        )
    return found


def vllm_command(base: str, adapter_dir: Path, name: str) -> str:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    rank = vllm_max_lora_rank(max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()])) or VLLM_LORA_RANKS[-1]
    extra = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
    return f"vllm serve {base} --enable-lora --lora-modules {name}=<path to adapter/>{extra}"


def section(base: str, name: str, adapter_dir: Path) -> str:
    """The model card's "Serving" section (for adapter/ and merged/)."""
    warnings = adapter_warnings(adapter_dir) if (Path(adapter_dir) / "adapter_config.json").is_file() else []
    notes = "".join(f"\n- **vLLM**: {w}" for w in warnings)
    return f"""
## Serving

These folders load as they are (safetensors only; the tokenizer's chat template gives the trained ids):

```bash
vllm serve <path to merged/>                                        # merged weights
{vllm_command(base, adapter_dir, name)}   # base + this adapter
docker run --gpus all -p 8080:80 -v $PWD:/data ghcr.io/huggingface/text-generation-inference \\
    --model-id /data/merged                                          # TGI, merged weights
docker run --gpus all -p 8080:80 -v $PWD:/data ghcr.io/huggingface/text-generation-inference \\
    --model-id {base} --lora-adapters {name}=/data/adapter        # TGI, base + adapter
```
vLLM's `/v1/chat/completions` renders the saved chat template and tokenizes it without adding special tokens:
the ids are the trained ones. TGI's chat endpoint has prepended its own BOS to templates that render one (not
checked here): with TGI, send `/generate` the text `apply_chat_template(..., tokenize=False)` gives, minus its
leading `<s>` (TGI adds that BOS).{notes}
"""
