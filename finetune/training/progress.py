"""What a run shows while it trains: one progress bar over the optimizer steps with the latest loss on it, and
one line per evaluation; replaces Trainer's dict printouts and its nested evaluation bars (rank 0 only)."""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class Progress(TrainerCallback):
    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs.get('learning_rate', 0):.2g}")
        evals = {
            k[5:]: v
            for k, v in logs.items()
            if k.startswith("eval_")
            and isinstance(v, (int, float))
            and k.split("_")[1] in ("loss", "rewards", "perplexity")
        }
        if "train_runtime" in logs:
            self.bar.write(
                f"trained {state.global_step} steps in {logs['train_runtime']:.0f} s, mean loss "
                f"{logs.get('train_loss', float('nan')):.4g}"
            )
        if evals:
            self.bar.write(
                f"eval at step {state.global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(evals.items()))
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use(trainer) -> None:
    """Our progress display instead of Trainer's (a bar plus a printed dict per log, and nested eval bars)."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress())


def close(trainer) -> None:
    """End the bar where it stands (a run stopped mid-step), so what is printed next starts on its own line."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, Progress) and cb.bar is not None:
            cb.bar.close()
            cb.bar = None
