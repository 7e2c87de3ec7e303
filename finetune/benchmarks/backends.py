"""`benchmarks.backend`: hf (transformers in this process, the model exactly as trained) or vllm (lm_eval's vLLM
backend serving the base with the run's LoRA adapter; CUDA only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from finetune.benchmarks.options import BACKENDS, BenchmarksConfig
from finetune.benchmarks.tasks import BenchmarkError
from finetune.config import ConfigError, TrainConfig


def check(b: BenchmarksConfig, run: Path) -> None:
    if b.backend not in BACKENDS:
        raise ConfigError([f"benchmarks.backend={b.backend}: use one of {', '.join(BACKENDS)}"])
    if b.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BenchmarkError(
            "benchmarks.backend=vllm: vLLM is not installed here (pip install vllm, on a CUDA "
            "machine); benchmarks.backend=hf (the default) runs the same tasks through transformers"
        )


def vllm_lm(train_cfg: TrainConfig, run: Path, adapter: bool, merged: bool, batch_size: int):
    """lm_eval's VLLM for the run's base (bitsandbytes 4-bit when the run trained so) with the adapter as a LoRA
    request, or for merged/. vLLM computes in its own kernels: scores can differ slightly from backend=hf."""
    from lm_eval.models.vllm_causallms import VLLM

    four_bit = train_cfg.quant.mode in ("nf4", "fp4") and not merged
    return VLLM(
        pretrained=str(run / "merged") if merged else train_cfg.model.path,
        tokenizer=str(run / "adapter"),
        dtype=train_cfg.model.dtype,
        quantization="bitsandbytes" if four_bit else None,
        lora_local_path=str(run / "adapter") if adapter else None,
        max_lora_rank=max(16, train_cfg.lora.r),
        batch_size=batch_size,
    )
