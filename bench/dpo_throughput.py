"""DPO throughput: TRL's DPOTrainer as a plain user runs it against this toolkit's DPO path, in one process on one
card, on the same Orca preference pairs in the same order with the same LoRA and pairs per step.

  python bench/dpo_throughput.py --model 7b --arms trl,ours,ours-fused
  python bench/dpo_throughput.py --model 7b --arms trl,ours-fused-pack,ours-fused-nogc
  python bench/dpo_throughput.py --smoke          # tiny model on a CPU in seconds (tests/integration/test_bench.py)

Arms:
- `trl`: AutoModelForCausalLM (SDPA) + bitsandbytes NF4 (plain_hf.load), a peft LoraConfig handed to DPOTrainer as
  `peft_config` (TRL wraps the model and takes the reference by switching the adapter off), DPOConfig's defaults
  except the batch settings (micro-batch, grad accumulation, max_steps) and what a benchmark needs (a log line every
  step, no checkpoints, no reports; on a CPU, bf16 off). TRL renders the saved tokenizer's chat template over the
  conversational prompt/chosen/rejected and tokenizes them itself, as it does for a user.
- `ours`: the DPO recipe as shipped (recipes/dpo_qlora_<size>.yaml) through finetune.training.dpo.build, built as
  finetune/train.py builds it (train_throughput.our_trainer): Meta-exact ids, our collator, the reference as a
  frozen copy of the adapter. `ours-fused-pack` adds knobs (train_throughput.KNOBS and `pack`: packed DPO).
Same for every arm: the random-init model saved once (train_throughput.materialize); LoRA r=16, alpha 16, dropout 0
on all 7 linear layers; the bundled Orca pairs whose Meta-exact tokens fit the 7B/13B recipes' limits (1024 tokens,
prompt <= 512; 1024 is DPOConfig's max_length; --smoke: 384 and 192), shuffled by the data config's seed, the first
micro-batch x grad accum x steps of them, so each is trained once and every arm's seeded sampler deals them in the
same order.

Reported: REAL tokens/s over the timed steps: the non-pad tokens of prompt+chosen and prompt+rejected of every batch
the arm's collator built, i.e. what the model was fed (not a config product); peak allocated/reserved GPU memory
after loading; median step time; and a gate: the step-0 loss within 1e-2 of ln 2 (a new LoRA starts as the
reference, so every pair's margin is 0), every loss finite, every LoRA gradient norm > 0. The arms tokenize
separately (TRL: the saved tokenizer's chat template through the Hugging Face tokenizer; ours: Meta's encoding, which
that tokenizer reproduces where the installed tokenizers library does, so tokens per step agree or nearly) and train
with different settings (TRL's defaults: lr 1e-6, linear decay, AdamW; the recipe's: 5e-6, cosine with warmup, paged
AdamW), so losses after step 0 differ and no step-by-step comparison is made: the gate is the step-0 loss, ln 2 for
every arm. Results are appended to <results>/dpo_throughput.{md,jsonl}.
"""

from __future__ import annotations

import argparse
import gc
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

import perf  # noqa: E402
import plain_hf  # noqa: E402
import train_throughput as tt  # noqa: E402
from finetune.data import examples, pairs  # noqa: E402
from finetune.data.load import Prepared  # noqa: E402
from finetune.data.stats import Stats  # noqa: E402
from finetune.model import tokenizer as model  # noqa: E402
from finetune.training import dpo  # noqa: E402

RECIPES = {
    ("tiny", "nf4"): "tiny_dpo",
    ("7b", "nf4"): "dpo_qlora_7b",
    ("7b", "none"): "dpo_lora_7b",
    ("13b", "nf4"): "dpo_qlora_13b",
}
KNOBS = {**tt.KNOBS, "pack": "trainer.packing=true"}  # packed DPO: each micro-batch one padding-free row
LORA = tt.LORA  # r=16, alpha 16, dropout 0 on all 7 linear layers
LIMITS = (1024, 512)  # pairs that fit: the 7B/13B recipes' data.max_length (DPOConfig's max_length) and prompt limit
SMOKE_LIMITS = (384, 192)  # --smoke: shorter pairs (44 fit), so a CPU step takes seconds
LN2 = math.log(2)


def shared_overrides(a, model_dir: str, run_dir: Path) -> list[str]:
    """What our arms share with TRL's: model, LoRA, data limits, pairs per step, steps; the recipe keeps the rest."""
    return [
        f"model.path={model_dir}",
        "model.random_init=false",
        f"lora.r={LORA['r']}",
        f"lora.alpha={LORA['alpha']}",
        f"lora.dropout={LORA['dropout']}",
        f"data.max_length={a.limits[0]}",
        f"data.max_prompt_length={a.limits[1]}",
        "data.too_long=drop",
        "data.eval_fraction=0",
        f"trainer.micro_batch_size={a.micro_batch}",
        f"trainer.grad_accum={a.grad_accum}",
        f"trainer.max_steps={a.warmup + a.steps}",
        "trainer.logging_steps=1",
        "trainer.save_steps=1000000",
        "seed=42",
        f"output_dir={run_dir}",
    ]


def pick_pairs(cfg, tok, n: int) -> list[dict]:
    """The first `n` pairs, in the data config's shuffled order, whose Meta-exact tokens fit the limits (repeated
    if fewer fit): {"prompt": messages, "chosen": text, "rejected": text}."""
    fit = [ex for ex in examples.examples(cfg.data) if pairs.encode(ex, tok.sp, cfg.data, Stats())]
    return (fit * -(-n // len(fit)))[:n]


def datasets(chosen: list[dict], cfg, tok):
    """(ours, TRL's) datasets of the same pairs in the same order: our id columns (what data.load builds), and
    TRL's conversational prompt/chosen/rejected, which it tokenizes itself."""
    from datasets import Dataset

    ours_ds = Dataset.from_dict(pairs.tokenize(chosen, tok.sp, cfg.data, Stats()))
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    trl_ds = Dataset.from_list(
        [{"prompt": ex["prompt"], "chosen": answer(ex["chosen"]), "rejected": answer(ex["rejected"])} for ex in chosen]
    )
    return ours_ds, trl_ds


class Counted:
    """A collator that records the real (attention-mask) tokens of every batch it builds, in the order built: the
    Trainer consumes batches in that order, so step s used batches (s-1)*grad_accum .. s*grad_accum-1."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, []

    def __call__(self, features):
        batch = self.collate(features)
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


def trl_trainer(a, quant_mode: str, model_dir: str, ds, run_dir: Path):
    """TRL's DPOTrainer with DPOConfig's defaults but the batch settings, over plain_hf.load's model."""
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cpu = {} if torch.cuda.is_available() else {"bf16": False, "use_cpu": True}  # DPOConfig defaults to bf16
    args = DPOConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.grad_accum,
        max_steps=a.warmup + a.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        **cpu,
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(plain_hf.LLAMA_LINEARS),
        task_type="CAUSAL_LM",
    )
    return DPOTrainer(
        model=plain_hf.load(quant_mode, model_dir),
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=lora,
    )


def run_arm(a, name: str, recipe: str, quant_mode: str, model_dir: str, dsets) -> perf.ArmResult:
    ours_ds, trl_ds = dsets
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if name == "trl":
            trainer, overrides = trl_trainer(a, quant_mode, model_dir, trl_ds, Path(tmp)), []
        else:
            overrides = tt.arm_overrides(name, KNOBS) + list(a.override)
            cfg = tt.compose(recipe, shared_overrides(a, model_dir, Path(tmp)) + overrides)
            trainer = tt.our_trainer(cfg, Prepared(ours_ds, None, Stats()), Path(tmp), dpo.build)
        trainer.data_collator = counted = Counted(trainer.data_collator)
        load_s = time.perf_counter() - t0
        timer, peak = tt.train(trainer)
        del trainer
    return result(a, name, timer, counted.tokens, load_s, peak, overrides)


def result(
    a, name: str, timer, batch_tokens: list[int], load_s: float, peak: tuple, overrides: list[str]
) -> perf.ArmResult:
    """The timed steps' real tokens/s (from the batches) and step time; every step's loss and grad norm."""
    first, last = a.warmup + 1, a.warmup + a.steps
    tokens = sum(batch_tokens[a.warmup * a.grad_accum : last * a.grad_accum])
    wall = timer.end[last] - timer.begin[first]
    notes = []
    seen = {s: lg.get("num_tokens") for s, lg in timer.logs.items()}  # TRL's own running count, cross-checked
    if seen.get(last) is not None and (not a.warmup or seen.get(a.warmup) is not None):
        trl_count = float(seen[last]) - (float(seen[a.warmup]) if a.warmup else 0.0)
        if abs(trl_count - tokens) > 0.5:
            notes.append(f"TRL's num_tokens over the timed steps is {trl_count:,.0f}, the batches say {tokens:,}")
    steps = sorted(timer.logs)
    return perf.ArmResult(
        arm=name,
        tokens_per_s=tokens / wall,
        step_s_median=statistics.median(timer.end[s] - timer.begin[s] for s in range(first, last + 1)),
        tokens_per_step=tokens / a.steps,
        mfu=None,
        peak_alloc_gib=peak[0],
        peak_reserved_gib=peak[1],
        load_s=load_s,
        losses=[timer.logs[s]["loss"] for s in steps],
        grad_norms=[timer.grad_norm[s] for s in steps],
        overrides=overrides,
        notes=notes,
    )


def gate(r: perf.ArmResult) -> str:
    """Step-0 loss at ln 2 (policy = reference), losses finite, gradients alive."""
    if not r.losses:
        return "FAIL: no losses logged"
    d0 = abs(r.losses[0] - LN2)
    finite = all(math.isfinite(x) for x in r.losses)
    alive = all(g > 0 and math.isfinite(g) for g in r.grad_norms)
    ok = d0 <= 1e-2 and finite and alive
    return (
        ("pass: " if ok else "FAIL: ")
        + f"step-0 loss off ln 2 by {d0:.1e} (tol 1e-02), "
        + ("losses finite" if finite else "a loss is not finite")
        + ("" if alive else ", a gradient norm is zero or not finite")
    )


def table(run: dict, results: list[perf.ArmResult], gates: dict[str, str]) -> str:
    base = results[0]
    gib = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        f"### {run['title']}",
        "",
        f"{run['env']['date']} · {run['env']['card']} · CUDA {run['env']['cuda']} · "
        + ", ".join(f"{k} {v}" for k, v in run["env"]["versions"].items() if v),
        f"Orca DPO pairs (bundled) that fit {run['limits'][0]} tokens (prompt <= {run['limits'][1]}), "
        f"{run['pairs']} pairs · {run['steps']} timed steps after {run['warmup']} "
        f"warmup · real tokens = non-pad prompt+chosen and prompt+rejected tokens of the batches fed",
        f"`{run['command']}`",
        "",
        f"| arm | real tokens/s | × {base.arm} | peak alloc GiB | peak reserved GiB | step s (median) | "
        "real tokens/step | step-0 loss | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.arm} | {r.tokens_per_s:,.0f} | {r.tokens_per_s / base.tokens_per_s:.2f} | "
            f"{gib(r.peak_alloc_gib)} | {gib(r.peak_reserved_gib)} | {r.step_s_median:.2f} | "
            f"{r.tokens_per_step:,.0f} | {r.losses[0]:.4f} | {gates.get(r.arm, '')} |"
        )
    return "\n".join(lines + perf.footer(results, run, f"recipe `{run['recipe']}`")) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="7b", choices=sorted({m for m, _ in RECIPES}))
    p.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    p.add_argument(
        "--arms", default="trl,ours", help=f"comma-separated: trl, ours[-knob...] with knobs {', '.join(KNOBS)}"
    )
    p.add_argument("--override", action="append", default=[], help="extra key=value for our arms (repeatable)")
    p.add_argument("--micro-batch", type=int, default=2, help="pairs per micro-batch (each is two sequences)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, seconds: checks the benchmark itself")
    a = p.parse_args(argv)
    a.limits = LIMITS
    if a.smoke:
        a.model, a.warmup, a.steps, a.limits = "tiny", 1, 2, SMOKE_LIMITS
    unknown = []
    for x in a.arms.split(","):
        try:
            x == "trl" or tt.arm_overrides(x, KNOBS)
        except KeyError:
            unknown.append(x)
    if unknown or (a.model, a.quant) not in RECIPES:
        p.error(
            f"unknown arms {unknown}: use trl, ours[-knob...] with knobs {', '.join(KNOBS)}"
            if unknown
            else f"no DPO recipe for --model {a.model} --quant {a.quant}"
        )
    return a


def main(argv=None) -> list[perf.ArmResult]:
    a = parse(argv)
    recipe = RECIPES[(a.model, a.quant)]
    model_dir, _ = tt.materialize(a, recipe)
    cfg = tt.compose(recipe, shared_overrides(a, model_dir, Path(tempfile.gettempdir())))
    tok = model.load_tokenizer(cfg.model)
    chosen = pick_pairs(cfg, tok, a.micro_batch * a.grad_accum * (a.warmup + a.steps))
    dsets = datasets(chosen, cfg, tok)
    results, failed = perf.run_arms(
        sorted(a.arms.split(","), key=lambda x: x != "trl"),  # TRL's first: the column "× trl"
        lambda name: run_arm(a, name, recipe, cfg.quant.mode, model_dir, dsets),
        lambda r: (
            f"{r.tokens_per_s:,.0f} real tokens/s, {r.tokens_per_step:,.0f} tokens/step, peak alloc/reserved "
            f"{r.peak_alloc_gib}/{r.peak_reserved_gib} GiB"
        ),
        log=Path(a.results) / "arms.jsonl",
    )
    gates = {r.arm: gate(r) for r in results}
    run = {
        "title": f"{a.model} DPO {'QLoRA' if cfg.quant.mode == 'nf4' else 'LoRA ' + str(cfg.model.dtype)}, "
        f"micro-batch {a.micro_batch} pairs, grad accum {a.grad_accum}, LoRA r={LORA['r']}",
        "env": perf.environment(),
        "pairs": len(chosen),
        "limits": a.limits,
        "steps": a.steps,
        "warmup": a.warmup,
        "recipe": recipe,
        "failed": failed,
        "command": "python bench/dpo_throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    print(perf.record(Path(a.results), run, results, gates, name="dpo_throughput", render=table), flush=True)
    return results


if __name__ == "__main__":
    main()
