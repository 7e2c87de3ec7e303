"""Does the merged model behave like the adapter model it came from? Logits and greedy generations, measured.

The reference is the adapter on the base it was trained on (for QLoRA: the 4-bit base, loaded exactly as
training loaded it). Each model is loaded, run on the prompts and freed before the next one loads, so
verification needs one model's memory at a time.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune.config import QuantConfig, TrainConfig
from finetune.data import chat_format, examples
from finetune.data.stats import DataError
from finetune.model import base as model
from finetune.runtime import console

# Used only when the run's data file is gone; the card then says so.
FALLBACK_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for a job interview.",
]


@dataclass
class Drift:
    """Reference vs merged on the same prompts: the numbers the model card and the error report."""

    reference: str  # which adapter model it was compared with
    max_abs: float  # max |logits(reference) - logits(merged)| over every prompt position and vocab entry
    logit_scale: float  # max |logits(reference)|, so the tolerance means the same for any model size
    tolerance: float  # on max_abs / logit_scale
    prompts: int
    same_generations: int  # greedy continuations identical token for token
    samples: list[dict]  # {"prompt", "reference", "merged"} texts

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.logit_scale, 1e-12)

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance

    def summary(self, checked: bool = True) -> str:
        return (
            f"vs {self.reference}: max |dlogits| {self.max_abs:.2e} (relative to max |logits| "
            f"{self.logit_scale:.3g}: {self.relative:.2e}"
            + (f", tolerance {self.tolerance:.0e}" if checked else "")
            + f"); greedy generations identical on {self.same_generations}/{self.prompts} prompts"
        )


def default_tolerance(stored: torch.dtype, compute: torch.dtype) -> float:
    """float32 weights and a float32 reference agree to rounding (3.6e-7 measured); a 16-bit side rounds more."""
    return 1e-4 if stored == compute == torch.float32 else 5e-2


def run_examples(run: Path, train_cfg: TrainConfig) -> tuple[list[dict], str]:
    """The run's examples, held-out ones first, and where they come from: <run>/inputs.json, written by training;
    for a run without it (an older version's), the data file read again; without readable data, built-in
    prompts."""
    from finetune.runs import inputs

    if (record := inputs.read(run)) is not None:
        return record.examples, record.source(run)
    console.info(
        f"{Path(run).name} has no readable {inputs.FILE} (trained by an older version?): reading its data "
        f"{train_cfg.data.path} again for the verification prompts"
    )
    try:
        train, held_out = examples.splits(train_cfg.data)
        return held_out + train, f"the run's data ({train_cfg.data.path})"
    except (DataError, OSError):
        return [], f"built-in prompts (the run's data {train_cfg.data.path} is not readable here)"


def sample_prompts(found: tuple[list[dict], str], sp, n: int, max_tokens: int) -> tuple[list[list[int]], str]:
    """Up to `n` chat prompts (ids) from `run_examples`' result, held-out examples first; (ids, their source)."""
    exs, source = found
    if not exs:
        exs = [{"prompt": [{"role": "user", "content": p}]} for p in FALLBACK_PROMPTS]
    prompts = []
    for ex in exs:
        if "text" in ex:  # plain-text SFT: the opening of the text
            ids = [chat_format.BOS_ID] + sp.encode(ex["text"])[: max_tokens // 2]
        else:
            msgs = ex.get("prompt") or ex["messages"]
            first_user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
            ids = chat_format.encode_prompt(sp, msgs[: first_user + 1])
        if len(ids) <= max_tokens:
            prompts.append(ids)
        if len(prompts) == n:
            break
    return prompts, source


def heldout_sequences(
    found: tuple[list[dict], str], train_cfg: TrainConfig, sp, n: int, max_tokens: int
) -> tuple[list[tuple[list, list]], str]:
    """Up to `n` (ids, mask) sequences of at most `max_tokens` from `run_examples`' result, held-out first,
    encoded as training encodes them (mask = the tokens training scores); for a perplexity. Without examples:
    the built-in prompts, all their tokens scored."""
    from finetune.data import sft
    from finetune.data.stats import Stats

    exs, source = found
    if not exs:
        ids = [chat_format.encode_text(sp, p) for p in FALLBACK_PROMPTS]
        return ids[:n], source
    dcfg = dataclasses.replace(train_cfg.data, max_length=max_tokens, too_long="truncate")
    seqs = []
    for ex in exs:
        if "prompt" in ex:  # a preference pair: the dialog ending with the chosen answer
            ex = {"messages": [*ex["prompt"], {"role": "assistant", "content": ex["chosen"]}]}
        seqs += [(ids, mask) for ids, mask in sft.encode(ex, sp, dcfg, Stats()) if any(mask)]
        if len(seqs) >= n:
            break
    return seqs[:n], source


@torch.no_grad()
def run_prompts(net, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[torch.Tensor, list[int]]]:
    """(logits over the prompt, greedy continuation ids) for each prompt, one at a time (no padding)."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        logits = net(input_ids=x).logits[0].float().cpu()
        gen = net.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            use_cache=True,
        )  # training loads with the cache off
        out.append((logits, gen[0, len(ids) :].tolist()))
    return out


def adapter_outputs(
    train_cfg: TrainConfig,
    base_dir: Path,
    adapter_dir: Path,
    quantized: bool,
    prompts: list[list[int]],
    max_new_tokens: int,
):
    """Outputs of the adapter model: the run's base (4-bit if `quantized`, as in training) + the adapter."""
    from peft import PeftModel

    mcfg = dataclasses.replace(train_cfg.model, path=str(base_dir))  # a copy: the run's config is never changed
    base = model.load_base(mcfg, train_cfg.quant if quantized else QuantConfig(mode="none"))
    net = PeftModel.from_pretrained(base, str(adapter_dir))
    out = run_prompts(net, prompts, max_new_tokens)
    del net, base
    gc.collect()
    return out


def merged_outputs(merged_dir: Path, prompts: list[list[int]], max_new_tokens: int):
    """Outputs of the merged folder as a user loads it: stock from_pretrained, its stored dtype."""
    from transformers import AutoModelForCausalLM

    # "auto": a merged 70B (140 GB in bf16) spreads over every GPU, then CPU RAM
    net = AutoModelForCausalLM.from_pretrained(
        merged_dir, dtype="auto", device_map="auto" if torch.cuda.is_available() else "cpu"
    )
    out = run_prompts(net, prompts, max_new_tokens)
    del net
    gc.collect()
    return out


def compare(reference_name: str, reference, merged, tolerance: float, decode, prompts) -> Drift:
    """Drift between two `run_prompts` results."""
    max_abs = max(float((r[0] - m[0]).abs().max()) for r, m in zip(reference, merged))
    scale = max(float(r[0].abs().max()) for r in reference)
    same = sum(r[1] == m[1] for r, m in zip(reference, merged))
    samples = [
        {"prompt": decode(p), "reference": decode(r[1]), "merged": decode(m[1])}
        for p, r, m in zip(prompts, reference, merged)
    ]
    return Drift(
        reference=reference_name,
        max_abs=max_abs,
        logit_scale=scale,
        tolerance=tolerance,
        prompts=len(reference),
        same_generations=same,
        samples=samples,
    )
