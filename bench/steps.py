"""What every training arm of the benchmarks shares: the step timer and profiler callbacks, training with them, and
the ArmResult of the timed steps. Imported by train_throughput.py, dpo_throughput.py and unsloth_arm.py (the peer's
own process, which must not import the project's training stack)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import perf


class StepTimer(TrainerCallback):
    """Wall time per optimizer step (device synchronised), and the loss, grad norm and real tokens logged at it."""

    def __init__(self):
        self.begin, self.end, self.logs, self.grad_norm = {}, {}, {}, {}

    def on_step_begin(self, args, state, control, **kw):
        perf.sync()
        self.begin[state.global_step + 1] = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        perf.sync()
        self.end[state.global_step] = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        # our own norm of the (clipped: max_grad_norm is large in the benchmark) LoRA gradients, in float32
        grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
        self.grad_norm[state.global_step + 1] = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item() if grads else 0.0
        )

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.logs[state.global_step] = logs


class ProfileStep(TrainerCallback):
    """Optimizer step `step` under torch.profiler (CPU, and CUDA kernels where there is a GPU); its top 40 ops by
    self time (GPU time on CUDA, CPU time on a CPU) written to `path`: a few KB of text."""

    def __init__(self, step: int, path: Path, title: str):
        self.step, self.path, self.title, self.prof = step, path, title, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            kinds = torch.profiler.ProfilerActivity
            activities = [kinds.CPU, kinds.CUDA] if torch.cuda.is_available() else [kinds.CPU]
            perf.sync()
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.start()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is None or state.global_step != self.step:
            return
        perf.sync()
        self.prof.stop()
        by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            f"{self.title}\nstep {self.step} (after the timed steps), sorted by {by}\n\n"
            + self.prof.key_averages().table(sort_by=by, row_limit=40, max_name_column_width=100)
            + "\n"
        )  # kernel names run long; 100 characters tell them apart
        print(f"profile: {self.path}", flush=True)
        self.prof = None


def train(trainer, profile: ProfileStep | None = None) -> tuple[StepTimer, tuple]:
    """Train with a StepTimer (and `profile` taking its step); the timer and (peak allocated, peak reserved) GiB
    after loading (None on a CPU)."""
    timer = StepTimer()
    trainer.add_callback(timer)
    if profile is not None:
        trainer.add_callback(profile)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = (
        (torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30)
        if torch.cuda.is_available()
        else (None, None)
    )
    return timer, peak


def result(
    a, name: str, timer: StepTimer, load_s: float, peak: tuple, flops_per_token: float, overrides: list[str]
) -> perf.ArmResult:
    """The timed steps' tokens/s, step time and MFU, and every step's loss and grad norm."""
    last, first = a.warmup + a.steps, a.warmup + 1
    seen = {s: float(lg.get("num_tokens", lg.get("num_input_tokens_seen", 0))) for s, lg in timer.logs.items()}
    tokens = seen[last] - seen[a.warmup] if a.warmup else seen[last]
    wall = timer.end[last] - timer.begin[first]
    tps = tokens / wall
    steps = sorted(timer.logs)
    return perf.ArmResult(
        arm=name,
        tokens_per_s=tps,
        step_s_median=statistics.median(timer.end[s] - timer.begin[s] for s in range(first, last + 1)),
        tokens_per_step=tokens / a.steps,
        mfu=tps * flops_per_token / a.peak,
        peak_alloc_gib=peak[0],
        peak_reserved_gib=peak[1],
        load_s=load_s,
        losses=[timer.logs[s]["loss"] for s in steps],
        grad_norms=[timer.grad_norm[s] for s in steps],
        overrides=overrides,
    )
