"""Does a GGUF behave like merged/? Run it in llama.cpp (llama-cpp-python) and compare with transformers.

On the run's own held-out prompts: the logits over each prompt and the greedy continuation; on held-out
conversations: the perplexity of the tokens training scores (answers and their EOS). What gates the export
depends on the type: for 8 bits and more, max |dlogits| relative to max |logits|; below 8 bits, where logits
move by design, the perplexity ratio GGUF / merged. Also checked: the ids llama.cpp builds from the chat
template embedded in the GGUF equal `chat_format.encode_prompt`'s (multi-turn, with a system prompt).
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from finetune.data import chat_format

# Default tolerances. >= 8 bits: on max|dlogits| / max|logits| (tiny QLoRA run, CPU: f32 ~1e-6, f16 ~1e-3,
# q8_0 ~1e-2). Below: on perplexity(GGUF) / perplexity(merged), from llama.cpp's published Llama 2 7B numbers
# (q6_k +0.2%, q5 +0.5..1%, q4_k_m +1.4%, q4_0 +2.9%, q3_k_m +4%, q2_k +11%) with headroom.
LOGIT_TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2}
PPL_TOLERANCE = {6: 1.02, 5: 1.04, 4: 1.08, 3: 1.15, 2: 1.30}
# A system prompt, two finished turns and an open one: what the embedded template must encode as trained.
TEMPLATE_PROBE = [
    {"role": "system", "content": "You are  a helpful assistant.\nAnswer briefly."},
    {"role": "user", "content": "Hi there!  How are you?"},
    {"role": "assistant", "content": "Fine, thanks.   And you?"},
    {"role": "user", "content": "Grüße — 日本語 ok?"},
    {"role": "assistant", "content": "Ja. 😀"},
    {"role": "user", "content": "Bye."},
]


@dataclass
class GGUFCheck:
    """GGUF vs merged on the same prompts: what the card and the error report."""

    type: str
    gate: str  # "logits" or "perplexity"
    tolerance: float
    max_abs: float  # max |logits(merged) - logits(gguf)| over every prompt position and vocab entry
    logit_scale: float  # max |logits(merged)|
    ppl_merged: float
    ppl_gguf: float
    scored_tokens: int
    prompts: int
    same_generations: int
    template_ids_exact: bool  # llama.cpp's ids from the embedded template == encode_prompt
    margin: float = math.inf  # the smallest gap between merged/'s top two logits along its greedy answers

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.logit_scale, 1e-12)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_gguf / self.ppl_merged

    @property
    def value(self) -> float:
        return self.relative if self.gate == "logits" else self.ppl_ratio

    @property
    def ok(self) -> bool:
        return self.value <= self.tolerance and self.template_ids_exact

    def summary(self) -> str:
        gate = (
            f"relative max |dlogits| {self.relative:.2e}"
            if self.gate == "logits"
            else f"perplexity ratio {self.ppl_ratio:.4f}"
        ) + f" (tolerance {self.tolerance:g})"
        return (
            f"{self.type}: {gate}; max |dlogits| {self.max_abs:.2e} of max |logits| {self.logit_scale:.3g}; "
            f"perplexity {self.ppl_gguf:.4g} vs merged {self.ppl_merged:.4g} on {self.scored_tokens} held-out "
            f"tokens; greedy generations identical on {self.same_generations}/{self.prompts} prompts"
            f"{self.generations_note()}; template ids "
            f"{'exact' if self.template_ids_exact else 'DIFFER from training'}"
        )

    def generations_note(self) -> str:
        """Whether answers that differ are expected: a greedy step switches when a logit moves by half the gap
        between the top two, so on a model whose top two are close any lossy type may switch some."""
        if self.same_generations == self.prompts:
            return ""
        if 2 * self.max_abs >= self.margin:
            return (
                f" (expected for {self.type} on this model: its logits move by up to {self.max_abs:.2g} and "
                f"merged/'s top two candidates come within {self.margin:.2g} of each other, so a greedy answer "
                "can take another token; the gate decides)"
            )
        return (
            f" (not expected: logits moved by at most {self.max_abs:.2g}, less than half of merged/'s closest "
            f"top-two gap {self.margin:.2g}; the answers part after the prompt, where the drift is not measured)"
        )

    def record(self) -> dict:
        return {**asdict(self), "relative": self.relative, "ppl_ratio": self.ppl_ratio, "ok": self.ok}


def default_tolerance(gtype: str, bits: int) -> tuple[str, float]:
    if gtype in LOGIT_TOLERANCE:
        return "logits", LOGIT_TOLERANCE[gtype]
    return "perplexity", PPL_TOLERANCE[bits]


@dataclass
class Outputs:
    """One model's answers: logits over each prompt, greedy continuation ids, and per-sequence scored NLL."""

    logits: list[np.ndarray]
    generations: list[list[int]]
    nll: float  # summed over scored tokens
    scored: int
    margin: float = math.inf  # smallest top-1 minus top-2 logit over every greedy step


def top_gap(scores: torch.Tensor) -> float:
    top = torch.topk(scores.float(), 2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


def nll_of(logits: np.ndarray, ids: list[int], mask: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of the masked-in tokens (position i is predicted by row i - 1)."""
    lp = torch.log_softmax(torch.from_numpy(np.asarray(logits[:-1], dtype=np.float32)), dim=-1)
    target = torch.tensor(ids[1:])
    keep = torch.tensor(mask[1:], dtype=torch.bool)
    picked = lp[torch.arange(len(target)), target]
    return float(-picked[keep].sum()), int(keep.sum())


@torch.no_grad()
def merged_outputs(merged: Path, prompts, sequences, max_new_tokens: int) -> Outputs:
    """merged/ as a user loads it (stock transformers, float32 compute for a fair reference)."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    logits, gens, margin = [], [], math.inf
    for ids in prompts:
        x = torch.tensor([ids])
        logits.append(net(input_ids=x).logits[0].numpy())
        out = net.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=chat_format.EOS_ID,
            output_logits=True,
            return_dict_in_generate=True,
        )
        gens.append(out.sequences[0, len(ids) :].tolist())
        margin = min(margin, *(top_gap(step) for step in out.logits))
    total, scored = 0.0, 0
    for ids, mask in sequences:
        n, k = nll_of(net(input_ids=torch.tensor([ids])).logits[0].numpy(), ids, mask)
        total, scored = total + n, scored + k
    del net
    gc.collect()
    return Outputs(
        logits,
        [g[: g.index(chat_format.EOS_ID) + 1] if chat_format.EOS_ID in g else g for g in gens],
        total,
        scored,
        margin,
    )


def load(path: Path, n_ctx: int):
    """The GGUF in llama.cpp on the CPU, KV cache in f32 (llama.cpp's default f16 cache would add its own
    rounding, ~2e-4 relative on the tiny model, to what is measured here: the file's weights)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        logits_all=True,
        verbose=False,
        n_gpu_layers=0,
        n_threads=max(1, min(8, os.cpu_count() or 1)),
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


def gguf_outputs(llm, prompts, sequences, max_new_tokens: int) -> Outputs:
    """The same passes in llama.cpp: eval the ids, read every position's logits, greedy argmax decoding."""
    logits, gens = [], []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        logits.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        gen: list[int] = []
        while len(gen) < max_new_tokens:
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(nxt)
            if nxt == chat_format.EOS_ID:
                break
            llm.eval([nxt])
        gens.append(gen)
    total, scored = 0.0, 0
    for ids, mask in sequences:
        llm.reset()
        llm.eval(ids)
        n, k = nll_of(np.array(llm.scores[: len(ids)], dtype=np.float32), ids, mask)
        total, scored = total + n, scored + k
    return Outputs(logits, gens, total, scored)


def template_ids(llm, messages: list[dict]) -> list[int]:
    """The ids llama-cpp-python's chat handler feeds the model: the GGUF's tokenizer.chat_template rendered by its
    Jinja2ChatFormatter, tokenized by llama.cpp with special tokens parsed (its create_chat_completion path)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(token: int) -> str:
        return llm.detokenize([token], special=True).decode()

    fmt = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        bos_token=text(llm.token_bos()),
        eos_token=text(llm.token_eos()),
    )
    result = fmt(messages=messages)
    return llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)


def check(
    path: Path,
    gtype: str,
    bits: int,
    reference: Outputs,
    prompts,
    sequences,
    sp,
    max_new_tokens: int,
    tolerance: float | None,
) -> GGUFCheck:
    """Load `path` in llama.cpp, run everything `reference` ran, compare."""
    n_ctx = max(len(x) for x in [*prompts, *(s for s, _ in sequences)]) + max_new_tokens + 8
    llm = load(path, n_ctx)
    try:
        ours = gguf_outputs(llm, prompts, sequences, max_new_tokens)
        exact = template_ids(llm, TEMPLATE_PROBE) == chat_format.encode_prompt(sp, TEMPLATE_PROBE)
    finally:
        llm.close()
        del llm
        gc.collect()
    gate, tol = default_tolerance(gtype, bits)
    return GGUFCheck(
        type=gtype,
        gate=gate,
        tolerance=tolerance if tolerance is not None else tol,
        max_abs=max(float(np.abs(r - o).max()) for r, o in zip(reference.logits, ours.logits)),
        logit_scale=max(float(np.abs(r).max()) for r in reference.logits),
        ppl_merged=math.exp(reference.nll / max(reference.scored, 1)),
        ppl_gguf=math.exp(ours.nll / max(ours.scored, 1)),
        scored_tokens=reference.scored,
        prompts=len(prompts),
        same_generations=sum(a == b for a, b in zip(reference.generations, ours.generations)),
        template_ids_exact=exact,
        margin=reference.margin,
    )
