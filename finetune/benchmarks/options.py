"""The `benchmarks` settings of evaluate.py (`benchmarks=[gsm8k_mini,hellaswag_mini]` is `benchmarks.tasks=...`)."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("hf", "vllm")


@dataclass
class BenchmarksConfig:
    tasks: list[str] = field(default_factory=list)  # lm_eval task names: shipped (data/benchmarks), include=, stock
    include: str | None = None  # a folder of your own lm_eval task YAMLs (searched before the shipped ones)
    limit: int | None = None  # items per task (the first N); null: all of them
    num_fewshot: int | None = None  # null: each task's own setting (the shipped ones are zero-shot)
    chat_template: bool | None = None  # prompts in the Llama 2 chat format; null: as the run trained (chat data)
    backend: str = "hf"  # hf: transformers in this process; vllm: lm_eval's vLLM backend with the LoRA adapter
    max_gen_toks: int | None = None  # generated tokens per answer for generative tasks; null: the task's own
    merged: bool = False  # score <run>/merged (export.py merge=true) as the tuned model instead of base + adapter


def argv_shorthand(argv: list[str]) -> list[str]:
    """`benchmarks=[a,b]` on the command line means `benchmarks.tasks=[a,b]` (benchmarks also holds include=,
    limit=, backend=, so the list itself lives under `tasks`)."""
    return [("benchmarks.tasks=" + a.split("=", 1)[1]) if a.startswith("benchmarks=") else a for a in argv]
