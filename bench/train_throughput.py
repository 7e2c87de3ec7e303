"""Training throughput: plain Hugging Face (transformers Trainer + peft + bitsandbytes) against this toolkit's training
path, in one process on one card, on the same examples in the same order with the same LoRA and tokens per step.

  python bench/train_throughput.py --model 7b --quant nf4 --arms baseline,ours-nopack,ours-nopack-nogc
  python bench/train_throughput.py --model 7b --quant nf4 --data oasst --arms pad_to_max,ours
  python bench/train_throughput.py --smoke          # tiny model on a CPU in seconds (tests/integration/test_bench.py)
  python bench/train_throughput.py --model 7b --arms baseline,ours-nopack-fused --steps 2 --warmup 1 --profile

The base model is the real Llama 2 architecture with random weights, written once and loaded with from_pretrained,
so the 4-bit path is a user's. "ours" is the shipped recipe (recipes/<q>lora_<size>.yaml); "ours-nogc-nopack" adds
the overrides of those KNOBS. "unsloth" is the peer: unsloth's own loader, LoRA and offloaded checkpointing, in its own
process (unsloth_arm.py), on the baseline's rows from the baseline's starting LoRA.
Reports real (non-pad) tokens/s, peak allocated/reserved GPU memory, MFU against a matmul peak measured in this run,
and a gate: every arm's loss and grad norm at the same steps agree with the baseline's. Results are appended to
<results>/throughput.{md,jsonl}. --profile: each arm in this process runs one more step after the timed ones under
torch.profiler and writes its top 40 ops by self time (GPU time on CUDA, CPU time on a CPU) to
<results>/profile-<arm>.txt.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

import perf  # noqa: E402
import plain_hf  # noqa: E402
import unsloth_arm  # noqa: E402
from steps import ProfileStep, StepTimer, result, train  # noqa: E402,F401  (dpo_throughput reads train here)
from finetune import config  # noqa: E402
from finetune.data import load as data  # noqa: E402
from finetune.data.load import Prepared  # noqa: E402
from finetune.data.stats import Stats  # noqa: E402
from finetune.model import base as model_base  # noqa: E402
from finetune.model import checkpointing, fused_layers, lora, padding_free  # noqa: E402
from finetune.model import tokenizer as model  # noqa: E402
from finetune.planning import report as plan_report  # noqa: E402
from finetune.training import args as train_args  # noqa: E402
from finetune.training import sft  # noqa: E402

RECIPES = {
    ("tiny", "nf4"): "tiny_qlora",
    ("tiny", "none"): "tiny_lora",
    ("7b", "nf4"): "qlora_7b",
    ("7b", "none"): "lora_7b",
    ("13b", "nf4"): "qlora_13b",
    ("13b", "none"): "lora_13b",
    ("70b", "nf4"): "qlora_70b",
}
# Our arms: "ours" is the recipe as shipped; "ours-nogc-nopack" adds these knobs' overrides. `baseline` and
# `pad_to_max` are plain HF (plain_hf.py).
KNOBS = {
    "gc": "trainer.gradient_checkpointing=true",
    "nogc": "trainer.gradient_checkpointing=false",
    "nopack": "trainer.packing=false",  # full-length random rows: nothing to pack, and SDPA then needs no mask
    "noliger": "trainer.liger=false",
    "upcast": "quant.upcast_fp32=true",
    "offload": "trainer.activation_offloading=true",
    "adam8bit": "trainer.optim=paged_adamw_8bit",
    "fused": "trainer.fused_lora=true",  # fused LoRA autograd functions for q/k/v, o and the MLP
    "fit6": "trainer.memory_budget=5.86GB",  # issue 14's target, 0.7 x plain HF's 8.37 GiB (7B QLoRA, H200): the
    "fit12": "trainer.memory_budget=12GB",  # planner picks the layers to checkpoint and offloads their inputs
    "fit10": "trainer.memory_budget=10GB",  # 13B QLoRA: the planner needs 9.4 GiB (unsloth peaked at 8.85 GiB)
    "fit40": "trainer.memory_budget=40GB",  # 70B QLoRA on one 48 GB card, with room for the CUDA context
}
# knobs of the benchmark itself, not config keys: "compile" runs each decoder layer under torch.compile
BENCH_KNOBS = ("compile",)
PLAIN = ("baseline", "pad_to_max")
PEERS = ("unsloth",)  # other libraries, each in its own process (unsloth_arm.py): they patch transformers on import
LORA = dict(r=16, alpha=16, dropout=0.0)  # both arms: r=16 on all 7 linear layers, no dropout


def compose(recipe: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config.register()
    with initialize_config_dir(config_dir=str(config.CONFIGS_DIR), version_base="1.3"):
        return config.load(hydra_compose(config_name="train", overrides=[f"recipe={recipe}", *overrides]))


def shared_overrides(a, model_dir: str, run_dir: Path) -> list[str]:
    """What every one of our arms shares with the baseline: model, LoRA, batch, steps, optimizer schedule."""
    return [
        f"model.path={model_dir}",
        "model.random_init=false",
        f"lora.r={LORA['r']}",
        f"lora.alpha={LORA['alpha']}",
        f"lora.dropout={LORA['dropout']}",
        f"data.max_length={a.seq_len}",
        "data.eval_fraction=0",
        f"trainer.micro_batch_size={a.micro_batch}",
        f"trainer.grad_accum={a.grad_accum}",
        f"trainer.max_steps={plain_hf.train_steps(a)}",
        "trainer.learning_rate=2e-4",
        "trainer.lr_scheduler=constant",
        "trainer.warmup_ratio=0",
        "trainer.max_grad_norm=1e9",
        "trainer.logging_steps=1",
        "trainer.save_steps=1000000",
        "seed=42",
        f"output_dir={run_dir}",
    ]


def materialize(a, recipe: str) -> tuple[str, object]:
    """Random weights of the recipe's architecture, written once under $FINETUNE_CACHE (initialised on the GPU)."""
    cfg = compose(recipe, ["model.random_init=true", f"model.tokenizer={ROOT / 'data' / 'llama2-tokenizer'}"])
    tok = model.load_tokenizer(cfg.model)
    t0 = time.perf_counter()
    if getattr(a, "prequantized", False):  # NF4 written tensor by tensor: a 70B never exists in bf16 (138 GB)
        import random_nf4
        from finetune.config.paths import cache_root

        path = (cache_root() / "models" / f"random-nf4-{cfg.model.name}").resolve()
        cfg.model.path, cfg.model.random_init = str(random_nf4.write(cfg.model, tok, path)), False
    else:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model_base.prepare_path(cfg.model, tok)
    print(f"model ready at {cfg.model.path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return cfg.model.path, cfg


def datasets(a, cfg, tok):
    """(ours, plain HF) datasets with the same examples in the same order.

    random: every example exactly seq_len random tokens, all trained. oasst: the bundled conversations through
    finetune.data (assistant tokens trained), repeated to last the run; plain HF pads each one to seq_len."""
    from datasets import Dataset

    n = a.micro_batch * a.grad_accum * plain_hf.train_steps(a)
    if a.data == "random":
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, cfg.model.arch.vocab_size, (n, a.seq_len), generator=g).tolist()
        masks = [[1] * a.seq_len for _ in ids]
    else:
        train = data.load(cfg.data, tok).train
        reps = -(-n * a.seq_len // sum(len(x) for x in train["input_ids"])) + 1  # enough for packed arms too
        ids, masks = list(train["input_ids"]) * reps, list(train["assistant_masks"]) * reps
    pad = a.seq_len if a.data == "oasst" else None
    plain = {"input_ids": [], "attention_mask": [], "labels": []}
    for x, m in zip(ids, masks):
        fill = (pad or len(x)) - len(x)
        plain["input_ids"].append(x + [tok.pad_id] * fill)
        plain["attention_mask"].append([1] * len(x) + [0] * fill)
        plain["labels"].append([t if k else -100 for t, k in zip(x, m)] + [-100] * fill)
    lengths = [len(x) for x in ids]
    attn_len = sum(x * x for x in lengths) / sum(lengths)
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks}), Dataset.from_dict(plain), attn_len


def ours(a, recipe: str, overrides: list[str], model_dir: str, ds, run_dir: Path):
    """This toolkit's SFT path, as finetune/train.py runs it: load_base -> apply_lora -> sft.build."""
    cfg = compose(recipe, shared_overrides(a, model_dir, run_dir) + overrides)
    return our_trainer(cfg, Prepared(ds, None, Stats()), run_dir, sft.build)


def our_trainer(cfg, prepared: Prepared, run_dir: Path, build):
    """load_base -> apply_lora -> fused layers, padding-free DPO, the budget's checkpointing (each where the config
    asks, as finetune/train.py applies them) -> `build` (sft.build or dpo.build), without our own callbacks."""
    tok = model.load_tokenizer(cfg.model)
    base = model_base.load_base(cfg.model, cfg.quant, train_args.gradient_checkpointing(cfg))
    torch.manual_seed(0)  # the same LoRA A matrices as the baseline's
    peft_model = lora.apply_lora(base, cfg.lora)
    if cfg.trainer.fused_lora:  # as finetune/train.py does
        print(fused_layers.apply(peft_model), flush=True)
    if cfg.trainer.packing and cfg.trainer.kind == "dpo":  # packed DPO: each micro-batch one padding-free row
        print(padding_free.enable(peft_model), flush=True)
    if layers := plan_report.budget_plan(cfg):  # trainer.memory_budget: the planner's per-layer checkpointing
        print(layers.line(), flush=True)
        checkpointing.apply(peft_model, layers.checkpointed(), layers.setup.offload_checkpoints)
    trainer = build(cfg, peft_model, tok, prepared, run_dir)
    for cb in list(trainer.callback_handler.callbacks):  # no metrics.jsonl, loss.png or samples in a benchmark
        if type(cb).__module__.startswith("finetune."):
            trainer.remove_callback(cb)
    return trainer


def run_arm(a, name: str, recipe: str, cfg, model_dir: str, dsets, attn_len: float, flops) -> perf.ArmResult:
    ours_ds, plain_ds = dsets
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if name in PEERS:  # its own process, the baseline's rows and starting LoRA
        if a.profile:
            print(f"profile: not taken for {name} (its own process)", flush=True)
        return unsloth_arm.run(a, cfg.quant.mode, model_dir, plain_ds, LORA, flops(attn_len))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if name in PLAIN:
            trainer, overrides = plain_hf.trainer(a, cfg.quant.mode, model_dir, plain_ds, Path(tmp), LORA), []
            if name == "baseline" and a.lora_init:
                unsloth_arm.save_lora(trainer.model, a.lora_init)
        else:
            overrides = arm_overrides(name) + list(a.override)
            trainer = ours(a, recipe, overrides, model_dir, ours_ds, Path(tmp))
            if "compile" in name.split("-"):  # nn.Module.compile: this instance's forward, compiled in place
                for layer in fused_layers.decoder_layers(trainer.model):
                    layer.compile()
                overrides = overrides + ["(each decoder layer under torch.compile)"]
        load_s = time.perf_counter() - t0
        profile = (
            ProfileStep(
                trainer.args.max_steps,
                Path(a.results) / f"profile-{name}.txt",
                f"{name}: {a.model} {a.quant}, {a.data} data, micro-batch {a.micro_batch} x {a.seq_len}, "
                f"{perf.environment()['card']}",
            )
            if a.profile
            else None
        )
        timer, peak = train(trainer, profile)
        del trainer
    return result(a, name, timer, load_s, peak, flops(attn_len), overrides)


def arm_overrides(name: str, knobs: dict = KNOBS) -> list[str]:
    """`ours-nogc-nopack` -> the overrides of knobs nogc and nopack; KeyError names an unknown knob."""
    head, *names = name.split("-")
    if head != "ours":
        raise KeyError(name)
    return [knobs[k] for k in names if k not in BENCH_KNOBS]


def ordered(arms: list[str]) -> list[str]:
    """Baselines first (the peer starts from the baseline's LoRA), Liger arms last: Liger replaces transformers'
    Llama classes for the rest of the process."""
    return sorted(
        arms, key=lambda name: 0 if name in PLAIN else 1 if "noliger" in name.split("-") or name in PEERS else 2
    )


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="7b", choices=sorted({m for m, _ in RECIPES}))
    p.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    p.add_argument("--data", default="random", choices=["random", "oasst"])
    p.add_argument(
        "--arms",
        default="baseline,ours",
        help=f"comma-separated: baseline, pad_to_max, unsloth, ours[-knob...] with knobs "
        f"{', '.join((*KNOBS, *BENCH_KNOBS))}",
    )
    p.add_argument("--override", action="append", default=[], help="extra key=value for our arms (repeatable)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, seconds: checks the benchmark itself")
    p.add_argument(
        "--prequantized",
        action="store_true",
        help="random weights written already in NF4 (bench/random_nf4.py; always for --model 70b)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="one more step per arm under torch.profiler: <results>/profile-<arm>.txt (not the peer's)",
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.model, a.seq_len, a.warmup, a.steps = "tiny", 512 if a.data == "oasst" else 64, 1, 2
    a.prequantized = a.prequantized or a.model == "70b"
    if a.prequantized and a.quant != "nf4":
        p.error("--prequantized writes NF4 weights: use it with --quant nf4")
    unknown = []
    for x in a.arms.split(","):
        try:
            x in PLAIN + PEERS or arm_overrides(x)
        except KeyError:
            unknown.append(x)
    if unknown or (a.model, a.quant) not in RECIPES:
        p.error(
            f"unknown arms {unknown}: use baseline, pad_to_max, unsloth, ours[-knob...] with knobs "
            f"{', '.join((*KNOBS, *BENCH_KNOBS))}"
            if unknown
            else f"no recipe for --model {a.model} --quant {a.quant}"
        )
    return a


def main(argv=None) -> list[perf.ArmResult]:
    a = parse(argv)
    recipe = RECIPES[(a.model, a.quant)]
    a.peak, peak_what = perf.matmul_peak()
    model_dir, cfg = materialize(a, recipe)
    cfg.data.max_length, cfg.data.eval_fraction = a.seq_len, 0.0
    tok = model.load_tokenizer(compose(recipe, [f"model.path={model_dir}", "model.random_init=false"]).model)
    ours_ds, plain_ds, attn_len = datasets(a, cfg, tok)
    flops = lambda L: perf.llama_flops_per_token(cfg.model.arch, LORA["r"], config.LLAMA_LINEARS, L)  # noqa: E731
    with tempfile.TemporaryDirectory() as scratch:
        a.lora_init = str(Path(scratch) / "lora_init.pt") if set(PEERS) & set(a.arms.split(",")) else None
        results, failed = perf.run_arms(
            ordered(a.arms.split(",")),
            lambda name: run_arm(a, name, recipe, cfg, model_dir, (ours_ds, plain_ds), attn_len, flops),
            lambda r: (
                f"{r.tokens_per_s:,.0f} tokens/s, peak alloc/reserved {r.peak_alloc_gib}/{r.peak_reserved_gib} "
                f"GiB, MFU {r.mfu:.1%}"
            ),
            log=Path(a.results) / "arms.jsonl",
        )
    cuda = torch.cuda.is_available()
    gates = {}
    if a.data == "random" and results[0].arm == "baseline":  # same batches at every step: compare step by step
        for r in results[1:]:
            ok, why = perf.gate(results[0], r, 5e-3 if cuda else 1e-4, 5e-2 if cuda else 1e-3)
            gates[r.arm] = ("pass: " if ok else "FAIL: ") + why
    run = {
        "title": f"{a.model} {'QLoRA' if a.quant == 'nf4' else 'LoRA ' + str(cfg.model.dtype)}, {a.data} data, "
        f"micro-batch {a.micro_batch} x {a.seq_len}, grad accum {a.grad_accum}, LoRA r={LORA['r']}",
        "env": perf.environment(),
        "peak_tflops": a.peak / 1e12,
        "peak_what": peak_what,
        "data": a.data,
        "steps": a.steps,
        "warmup": a.warmup,
        "profile": a.profile,
        "recipe": recipe,
        "failed": failed,
        "command": "python bench/train_throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    print(perf.record(Path(a.results), run, results, gates), flush=True)
    return results


if __name__ == "__main__":
    main()
