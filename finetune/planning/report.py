"""Will this config fit these GPUs, how fast, and what to change: the planner applied to a composed config.

Used by `finetune/plan.py` (the report) and by `finetune/train.py` (the same check, before weights load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import OmegaConf

from finetune import config
from finetune.config import ConfigError, TrainConfig, UserError, parse_size
from finetune.planning import longctx, planner
from finetune.planning.planner import GiB, Setup
from finetune.runtime import memory
from finetune.runtime.dist import launched_sharding


class PlanError(UserError, RuntimeError):
    """The recipe cannot fit the GPUs: the message is the breakdown and the changes that would fit."""


@dataclass
class Card:
    name: str  # a key of planner.GPUS
    peak_flops: float
    memory: float  # bytes per GPU
    source: str  # where the numbers came from, said in the report


def card(plan, cuda: bool) -> Card:
    """The card to plan for: `plan.gpu`/`plan.gpu_memory` where given, else the GPU present, else an H100."""
    import torch

    name, source = plan.gpu, "plan.gpu"
    if name is not None and name not in planner.GPUS:
        raise ConfigError([f"plan.gpu={name}: use one of {', '.join(planner.GPUS)}"])
    present = torch.cuda.get_device_name(0) if cuda else ""
    if name is None:
        found = planner.gpu_named(present)
        name, source = (found, f"the {present} present") if found else ("h100", "an H100 80GB, set gpu=")
    peak, mem = planner.GPUS[name][0], planner.GPUS[name][1] * GiB
    if plan.gpu_memory is not None:
        mem = parse_size(plan.gpu_memory, "plan.gpu_memory", "G", "the memory per GPU like 24GB or 80GiB")
        source = f"plan.gpu_memory; speed for {source}"
    elif cuda and plan.gpu is None:
        mem = torch.cuda.get_device_properties(0).total_memory
    return Card(name, peak, mem, source)


def setup(cfg: TrainConfig, gpus: int, sharding: str) -> Setup:
    arch, trainer, quant = cfg.model.arch, cfg.trainer, cfg.quant
    return Setup(
        hidden=arch.hidden_size,
        ffn=arch.intermediate_size,
        layers=arch.num_layers,
        heads=arch.num_heads,
        kv_heads=arch.num_kv_heads,
        vocab=arch.vocab_size,
        quant=quant.mode,
        double_quant=quant.double_quant,
        upcast_fp32=quant.upcast_fp32,
        dtype_bytes=4 if cfg.model.dtype == "float32" else 2,
        lora_r=cfg.lora.r,
        lora_modules=tuple(cfg.lora.target_modules),
        lora_dropout=cfg.lora.dropout,
        optim=trainer.optim,
        micro_batch=trainer.micro_batch_size,
        max_length=cfg.data.max_length,
        checkpointing=trainer.gradient_checkpointing is not False,  # None: on with CUDA; this is a GPU plan
        packing=trainer.packing,
        liger=trainer.liger,
        offload_activations=trainer.activation_offloading,
        eager_attention=cfg.model.attn_implementation == "eager",
        kind=trainer.kind,
        dora=cfg.lora.use_dora,
        precompute_ref=trainer.precompute_ref,
        gpus=gpus,
        sharding=sharding,
        attention=cfg.model.attn_implementation,
        train_embeddings_and_norms=cfg.lora.train_embeddings_and_norms,
    )


PLAN_KEYS = ("model.arch", "lora", "trainer", "quant", "plan")  # what the arithmetic reads


def load(dict_cfg) -> TrainConfig:
    """The composed config for planning: the config's own checks (`config.check`), so a plan works on a machine
    without the model, the data or bitsandbytes (training checks those before it loads anything). Required keys
    the arithmetic never reads (a data path) may stay unset."""
    unused = {k for k in OmegaConf.missing_keys(dict_cfg) if not k.startswith(PLAN_KEYS)}
    problems = [p for p in config.check(dict_cfg) if p.split(":")[0] not in unused]
    if problems:
        raise ConfigError(problems)
    return OmegaConf.to_object(dict_cfg)


def fits(run_setup: Setup, gpu: Card) -> bool:
    return planner.memory(run_setup).need <= gpu.memory


def suggestions(run_setup: Setup, gpu: Card, grad_accum: int) -> list[tuple[str, Setup]]:
    """Changes that make `run_setup` fit `gpu`, each checked by its own estimate; single changes first, then
    together."""
    out: list[tuple[str, Setup]] = []
    if run_setup.quant == "none":
        out.append(("quant.mode=nf4 quant.double_quant=true  (QLoRA)", run_setup.but(quant="nf4", double_quant=True)))
    if not run_setup.checkpointing:
        out.append(("trainer.gradient_checkpointing=true", run_setup.but(checkpointing=True)))
    for mb in range(run_setup.micro_batch - 1, 0, -1):
        accum = -(-grad_accum * run_setup.micro_batch // mb)  # same effective batch (rounded up)
        if fits(run_setup.but(micro_batch=mb), gpu) or mb == 1:
            out.append((f"trainer.micro_batch_size={mb} trainer.grad_accum={accum}", run_setup.but(micro_batch=mb)))
            break
    if planner.optimizer_bytes(run_setup.optim) > 2:
        out.append(("trainer.optim=paged_adamw_8bit", run_setup.but(optim="paged_adamw_8bit")))
    if longctx.mask_bytes(run_setup):  # packed rows: flash attention runs them as variable-length sequences, no mask
        out.append(
            (
                "model.attn_implementation=flash_attention_2  (pip install flash-attn)",
                run_setup.but(attention="flash_attention_2"),
            )
        )
    for length in range((run_setup.max_length - 1) // 256 * 256, 255, -256):
        if fits(run_setup.but(max_length=length), gpu) or length == 256:
            out.append((f"data.max_length={length}", run_setup.but(max_length=length)))
            break
    for n in (2, 4, 8, 16, 32):
        if n > run_setup.gpus and (fits(run_setup.but(gpus=n, sharding="fsdp"), gpu) or n == 32):
            out.append(
                (
                    f"{n} GPUs with FSDP: accelerate launch --config_file launch/accelerate/fsdp_qlora.yaml "
                    f"--num_processes {n} finetune/train.py ...",
                    run_setup.but(gpus=n, sharding="fsdp"),
                )
            )
            break
    found = [(label, new) for label, new in out if fits(new, gpu)]
    same_gpus = [(label, new) for label, new in out if new.gpus == run_setup.gpus]
    if not any(fits(new, gpu) for _, new in same_gpus):  # on these GPUs only changes together can fit
        found += together(run_setup, same_gpus, gpu)
    return found or together(run_setup, out, gpu)


def together(run_setup: Setup, changes: list[tuple[str, Setup]], gpu: Card) -> list[tuple[str, Setup]]:
    """The changes applied one after another, in order, until the result fits: [(their overrides, setup)] or []."""
    combined, labels = run_setup, []
    for label, new in changes:
        combined = combined.but(**{k: v for k, v in vars(new).items() if getattr(run_setup, k) != v})
        labels.append(label.split("  (")[0])
        if fits(combined, gpu):
            return [(" ".join(labels), combined)]
    return []


def report(cfg: TrainConfig, run_setup: Setup, gpu: Card, utilization: float) -> tuple[bool, str]:
    """(fits, the printed plan): breakdown, verdict with margin, speed, and changes that fit."""
    est = planner.memory(run_setup)
    ok = est.need <= gpu.memory
    base = "16-bit base" if run_setup.quant == "none" else f"{run_setup.quant.upper()} base"
    lines = [
        f"plan: {cfg.model.name}, LoRA r={run_setup.lora_r} ({base}), {run_setup.kind}, "
        f"micro-batch {run_setup.micro_batch} x {run_setup.max_length} tokens, "
        f"checkpointing {'on' if run_setup.checkpointing else 'off'}, "
        f"{run_setup.gpus} GPU{'s' if run_setup.gpus > 1 else ''} ({run_setup.sharding})",
        f"GPU: {gpu.memory / GiB:.1f} GiB each ({gpu.source})",
        "",
        "memory per GPU".ljust(70) + "GiB",
    ]
    lines += [f"  {label}".ljust(70) + f"{b / GiB:6.2f}" for label, b in est.parts.items()]
    lines += [
        "  total".ljust(70) + f"{est.need / GiB:6.2f}",
        f"  (peak allocated by PyTorch: {est.allocated / GiB:.2f} GiB)",
        "",
    ]
    margin = gpu.memory - est.need
    if ok:
        lines.append(
            f"verdict: FITS, {est.need / GiB:.1f} of {gpu.memory / GiB:.1f} GiB per GPU "
            f"(margin {margin / GiB:.1f} GiB, {margin / gpu.memory:.0%})"
        )
    else:
        lines.append(
            f"verdict: DOES NOT FIT, needs {est.need / GiB:.1f} GiB per GPU, has {gpu.memory / GiB:.1f} "
            f"(short by {-margin / GiB:.1f} GiB)"
        )
    tps = planner.tokens_per_second(run_setup, gpu.peak_flops, utilization)
    lines.append(
        f"speed: ~{tps:,.0f} tokens/s per GPU, ~{tps * run_setup.gpus:,.0f} in all "
        f"({est.flops_per_token / 1e9:.1f} GFLOP/token at {utilization:.1%} of "
        f"{gpu.peak_flops / 1e12:.0f} TFLOP/s, {gpu.name}"
        + (f", Liger x{planner.LIGER_SPEEDUP}" if run_setup.liger else "")
        + ")"
    )
    lines += [f"note: {n}" for n in est.notes]
    if run_setup.max_length > LONG:  # long context: the verdict on the common card sizes, and how long fits on each
        lines += [f"at {run_setup.max_length} tokens on one GPU of:"] + longctx.card_lines(
            run_setup, lambda x: planner.memory(x).need, lambda x, size: planner.memory(x).need <= size
        )
    if not ok:
        found = suggestions(run_setup, gpu, cfg.trainer.grad_accum)
        lines.append("changes that fit (each estimated):" if found else "no change the planner knows makes it fit")
        for label, new in found:
            e = planner.memory(new)
            lines.append(
                f"  {label}\n      -> {e.need / GiB:.1f} GiB (margin {(gpu.memory - e.need) / GiB:.1f} GiB), "
                f"~{planner.tokens_per_second(new, gpu.peak_flops, utilization):,.0f} tokens/s per GPU"
            )
    elif run_setup.checkpointing and fits(run_setup.but(checkpointing=False), gpu):
        faster = run_setup.but(checkpointing=False)
        lines.append(
            f"also fits: trainer.gradient_checkpointing=false -> {planner.memory(faster).need / GiB:.1f} "
            f"GiB, ~{planner.tokens_per_second(faster, gpu.peak_flops, utilization):,.0f} tokens/s per GPU"
        )
    return ok, "\n".join(lines)


LONG = 4096  # Llama 2's pretrained context: past it, the plan also judges 24/48/80 GB cards


def check_before_training(cfg: TrainConfig) -> str | None:
    """Training's preflight: the plan for the GPUs present (or `plan.gpus`/`plan.gpu_memory`). Raises PlanError
    when it cannot fit and `plan.strict`; returns the one line to print otherwise."""
    import torch

    plan_cfg, cuda = cfg.plan, torch.cuda.is_available()
    if plan_cfg.gpus is None and not cuda:
        return "plan: no GPU present, memory check skipped (plan.gpus=1 plan.gpu_memory=24GB checks a GPU you name)"
    gpus = plan_cfg.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    run_setup = setup(cfg, gpus, plan_cfg.sharding or launched_sharding() or "ddp")
    gpu = card(plan_cfg, cuda)
    ok, text = report(cfg, run_setup, gpu, plan_cfg.utilization)
    if ok:
        return text.splitlines()[[i for i, line in enumerate(text.splitlines()) if line.startswith("verdict")][0]]
    if plan_cfg.strict:
        raise PlanError(f"this run cannot fit the GPU memory (plan.strict=false runs it anyway):\n{text}")
    return f"warning: the plan says this run does not fit (plan.strict=false, going on):\n{text}"


def budget_plan(cfg: TrainConfig):
    """`trainer.memory_budget`: the fastest per-layer checkpointing plan within it (planning/budget.py), or None
    when unset; PlanError with the smallest plan's breakdown and the changes that fit when none does."""
    import dataclasses

    import torch

    from finetune.planning import budget

    tcfg, plan_cfg, cuda = cfg.trainer, cfg.plan, torch.cuda.is_available()
    if tcfg.memory_budget is None:
        return None
    if str(tcfg.memory_budget).lower() == "auto":
        if not cuda:
            raise ConfigError(
                ["trainer.memory_budget=auto reads the GPU's free memory and there is no GPU; give a size like 40GB"]
            )
        size, what = torch.cuda.mem_get_info()[0], "trainer.memory_budget=auto, the GPU's free memory"
    else:
        size = parse_size(tcfg.memory_budget, "trainer.memory_budget", "G", "a size like 40GB, or auto")
        what = f"trainer.memory_budget={tcfg.memory_budget}"
    gpus = plan_cfg.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    run_setup = setup(cfg, gpus, plan_cfg.sharding or launched_sharding() or "ddp")
    gpu = card(plan_cfg, cuda)
    if too_big := memory.beyond(size, what, gpu.memory, f"the GPU the plan is for ({gpu.source})", True):
        raise ConfigError([too_big])
    plan = budget.choose(run_setup, size, gpu.peak_flops, plan_cfg.utilization)
    if plan is None:
        smallest = run_setup.but(checkpointing=True, kept_layers=0, offload_checkpoints=True, offload_activations=False)
        _, text = report(cfg, smallest, dataclasses.replace(gpu, memory=size, source=what), plan_cfg.utilization)
        raise PlanError(f"no checkpointing plan fits {what} ({size / GiB:.1f} GiB); the smallest:\n{text}")
    return dataclasses.replace(plan, source=what)
