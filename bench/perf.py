"""What the throughput benchmark measures with: model FLOPs, a matmul peak measured in the same run, the card and
versions, the loss/grad-norm gate, and the results files. Formulas: bench/README.md (MFU).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "liger-kernel", "triton")


@dataclass
class ArmResult:
    """One arm of one run: what a user would notice (speed, memory) and what proves the math (loss, grad norm)."""

    arm: str
    tokens_per_s: float  # real (non-pad) tokens / wall time over the timed steps
    step_s_median: float
    tokens_per_step: float  # real tokens per optimizer step, timed steps
    mfu: float | None  # model FLOPs (no recompute) / measured matmul peak; None where not computed (DPO)
    peak_alloc_gib: float | None  # torch.cuda.max_memory_allocated, reset after loading; None on a CPU
    peak_reserved_gib: float | None
    load_s: float
    losses: list[float] = field(default_factory=list)  # every step, warmup included
    grad_norms: list[float] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # for our arms: the config overrides on top of the recipe
    notes: list[str] = field(default_factory=list)  # for a peer: its versions and settings


def llama_flops_per_token(arch, lora_r: int, lora_modules: list[str], attn_len: float) -> float:
    """LoRA training model FLOPs per real token: 4·N_mat + 6·N_lora + 3·A_f, with A_f = 2·L·d·attn_len (causal;
    attn_len = Σℓ²/Σℓ over the documents, so packed and padded batches count only real attention)."""
    d, f, L, V = arch.hidden_size, arch.intermediate_size, arch.num_layers, arch.vocab_size
    d_kv = d * arch.num_kv_heads // arch.num_heads
    shapes = {
        "q_proj": (d, d),
        "k_proj": (d, d_kv),
        "v_proj": (d, d_kv),
        "o_proj": (d, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }
    n_mat = L * sum(i * o for i, o in shapes.values()) + d * V
    n_lora = L * lora_r * sum(i + o for name, (i, o) in shapes.items() if name in lora_modules)
    return 4 * n_mat + 6 * n_lora + 3 * 2 * L * d * attn_len


def matmul_peak() -> tuple[float, str]:
    """Best FLOP/s of a few dense matmuls on this device (bf16 on CUDA, fp32 on a CPU), and what was measured."""
    cuda = torch.cuda.is_available()
    dtype, dev = (torch.bfloat16, "cuda") if cuda else (torch.float32, "cpu")
    shapes = [(8192, 8192, 8192), (8192, 4096, 11008)] if cuda else [(512, 512, 512)]
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=dev, dtype=dtype), torch.randn(k, n, device=dev, dtype=dtype)
        for _ in range(3):
            a @ b
        sync()
        iters, t0 = 10, time.perf_counter()
        for _ in range(iters):
            a @ b
        sync()
        best = max(best, 2 * m * k * n * iters / (time.perf_counter() - t0))
        del a, b
    return best, f"{dtype} matmul {' '.join(f'{m}x{k}x{n}' for m, k, n in shapes)}, best of {len(shapes)}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "card": card,
        "cuda": torch.version.cuda,
        "versions": versions,
    }


def gate(ref: ArmResult, other: ArmResult, rtol_loss: float, rtol_grad: float) -> tuple[bool, str]:
    """Same steps, same data: losses and grad norms agree with the baseline's, and the gradients are not zero."""
    n = min(len(ref.losses), len(other.losses), len(ref.grad_norms), len(other.grad_norms))
    if n == 0:
        return False, "no losses logged"
    dl = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref.losses[:n], other.losses[:n]))
    dg = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref.grad_norms[:n], other.grad_norms[:n]))
    alive = all(g > 0 and g == g for g in other.grad_norms[:n])
    ok = dl <= rtol_loss and dg <= rtol_grad and alive
    return ok, f"max rel Δloss {dl:.1e} (tol {rtol_loss:.0e}), max rel Δgrad-norm {dg:.1e} (tol {rtol_grad:.0e})"


def table(run: dict, results: list[ArmResult], gates: dict[str, str]) -> str:
    base = results[0]
    lines = [
        f"### {run['title']}",
        "",
        f"{run['env']['date']} · {run['env']['card']} · CUDA {run['env']['cuda']} · "
        + ", ".join(f"{k} {v}" for k, v in run["env"]["versions"].items() if v),
        f"matmul peak {run['peak_tflops']:.3g} TFLOP/s ({run['peak_what']}) · data: {run['data']} · "
        f"{run['steps']} timed steps after {run['warmup']} warmup"
        + (", then 1 under torch.profiler (profile-<arm>.txt)" if run.get("profile") else ""),
        f"`{run['command']}`",
        "",
        "| arm | tokens/s | × first | peak alloc GiB | peak reserved GiB | MFU | tokens/step | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.arm} | {r.tokens_per_s:,.0f} | {r.tokens_per_s / base.tokens_per_s:.2f} | "
            f"{gib_cell(r.peak_alloc_gib)} | {gib_cell(r.peak_reserved_gib)} | {r.mfu:.1%} | "
            f"{r.tokens_per_step:,.0f} | {gates.get(r.arm, '')} |"
        )
    return "\n".join(lines + footer(results, run, "recipe")) + "\n"


def gib_cell(gib: float | None) -> str:
    return "n/a" if gib is None else f"{gib:.2f}"


def footer(results: list[ArmResult], run: dict, recipe: str) -> list[str]:
    """The lines under a table: each arm's overrides of `recipe` and notes, then the arms that failed and why."""
    lines = []
    for r in results:
        if r.overrides:
            lines.append(f"\n{r.arm}: {recipe} + `{' '.join(r.overrides)}`")
        if r.notes:
            lines.append(f"\n{r.arm}: {'; '.join(r.notes)}")
    return lines + [f"\n{name}: FAILED {why}" for name, why in run.get("failed", {}).items()]


def record(
    results_dir: Path,
    run: dict,
    results: list[ArmResult],
    gates: dict[str, str],
    name: str = "throughput",
    render=table,
) -> str:
    """Append the run to <name>.jsonl (everything) and <name>.md (the table `render` makes); return the table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    with (results_dir / f"{name}.jsonl").open("a") as fh:
        fh.write(json.dumps({**run, "arms": [asdict(r) for r in results], "gates": gates}) + "\n")
    text = render(run, results, gates)
    with (results_dir / f"{name}.md").open("a") as fh:
        fh.write(text + "\n")
    return text


def run_arms(names: list[str], run_one, describe, log: Path | None = None) -> tuple[list[ArmResult], dict[str, str]]:
    """Each arm in turn, one line each (`describe(result)` then load, step time and the first losses); (results,
    {arm: why it failed}). One arm failing (out of memory, a kernel) must not lose the other arms' numbers; every
    arm failing ends the benchmark. `log`: each arm appended there as one JSON line as soon as it ends, so a run cut
    off by its time limit keeps the arms it finished."""
    results, failed = [], {}
    for name in names:
        try:
            r = run_one(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{name}: FAILED {failed[name]}", flush=True)
            append_line(log, {"arm": name, "failed": failed[name]})
            continue
        print(
            f"{name}: {describe(r)}, load {r.load_s:.0f} s, step {r.step_s_median:.2f} s, "
            f"losses {[round(x, 4) for x in r.losses[:4]]}",
            flush=True,
        )
        append_line(log, asdict(r))
        results.append(r)
    if not results:
        raise SystemExit(f"every arm failed: {failed}")
    return results, failed


def append_line(log: Path | None, row: dict) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(json.dumps({"date": environment()["date"], **row}) + "\n")
