"""metrics.jsonl (one JSON line per logging step) and loss.png, written by rank 0 only."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsCallback(TrainerCallback):
    """Appends every log (loss, lr, grad_norm, eval metrics) with step, elapsed time and tokens/s; with
    `perplexity` (SFT, where the loss is a token NLL) also eval_perplexity = exp(eval_loss).

    A resumed run continues the rows of the run it resumes: time, token count, runtime and the final train_loss
    count from the run's start, not from the restart (Trainer and TRL restart them from zero). The loss window
    itself is whole because a checkpoint step is always a logging step (`LogAtSave`)."""

    def __init__(self, run_dir: Path, perplexity: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.perplexity = perplexity
        self.t0 = time.perf_counter()
        self.last = (self.t0, 0.0)
        self.before = {"time_s": 0.0, "num_tokens": 0.0, "loss_sum": 0.0, "step": 0}  # the run before a resume

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step and state.is_world_process_zero and self.path.is_file():
            self.before = earlier(read(self.path), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now, b = time.perf_counter(), self.before
        row = {"step": state.global_step, "epoch": state.epoch, "time_s": round(b["time_s"] + now - self.t0, 3), **logs}
        tokens = logs.get("num_tokens")
        if tokens is not None and now > self.last[0]:
            row["tokens_per_s"] = (tokens - self.last[1]) / (now - self.last[0])
            row["num_tokens"] = b["num_tokens"] + tokens
            self.last = (now, tokens)
        if "train_runtime" in logs:
            row["train_runtime"] = b["time_s"] + logs["train_runtime"]
        if "train_loss" in logs and b["step"]:
            session = state.global_step - b["step"]
            row["train_loss"] = (b["loss_sum"] + logs["train_loss"] * session) / max(state.global_step, 1)
        if self.perplexity and "eval_loss" in logs:
            row["eval_perplexity"] = math.exp(logs["eval_loss"])
        # the trackers' callbacks read the same dict after this one (`first`): they get what metrics.jsonl gets
        logs.update(
            {
                k: row[k]
                for k in ("tokens_per_s", "num_tokens", "eval_perplexity", "train_loss", "train_runtime")
                if k in row
            }
        )
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.is_file():
            try:
                plot_loss(self.path, self.path.with_name("loss.png"))
            except ImportError:  # a GPU image without matplotlib still finishes and saves its adapter
                print("loss.png not written: matplotlib is not installed (pip install matplotlib)", flush=True)


class LogAtSave(TrainerCallback):
    """Log at every checkpoint step too, so a resumed run's first logged loss averages a whole window (the steps
    since the checkpoint, as the uninterrupted run's row does). Runs after Trainer's flow callback decides."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            control.should_log = True


def first(trainer, callback) -> None:
    """Run `callback` before the Trainer's reporting callbacks (TensorBoard, wandb), which Trainer adds first."""
    handler = trainer.callback_handler
    handler.callbacks.remove(callback)
    handler.callbacks.insert(0, callback)


def earlier(rows: list[dict], step: int) -> dict:
    """Elapsed time, tokens and summed loss (loss x steps in its window) of the rows up to `step`."""
    out, prev = {"time_s": 0.0, "num_tokens": 0.0, "loss_sum": 0.0, "step": step}, 0
    for r in rows:
        out["time_s"] = max(out["time_s"], r.get("time_s", 0.0))
        out["num_tokens"] = r.get("num_tokens", out["num_tokens"])
        if "loss" in r:
            out["loss_sum"] += r["loss"] * (r["step"] - prev)
            prev = r["step"]
    return out


def read(path: Path) -> list[dict]:
    """Every row of a metrics.jsonl; a line cut off by a kill (the last one) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Train and eval loss against the step, titled with the run's name; a DPO run adds its reward accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read(metrics_path)
    acc = [(r["step"], r[k]) for r in rows for k in ("rewards/accuracies", "eval_rewards/accuracies") if k in r]
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(11 if acc else 7, 4), squeeze=False)
    panels = [(axes[0][0], "loss", (("loss", "train loss"), ("eval_loss", "eval loss")))]
    if acc:
        panels.append(
            (axes[0][1], "reward accuracy", (("rewards/accuracies", "train"), ("eval_rewards/accuracies", "eval")))
        )
    for ax, ylabel, series in panels:
        for key, label in series:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o" if key.startswith("eval") else None, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps are whole numbers
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(Path(metrics_path).parent.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
