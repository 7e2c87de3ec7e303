"""Generations for a few fixed prompts during training: samples.jsonl, and a wandb table when wandb is on.

Prompts are token ids from `chat_format.encode_prompt` (`data.prompts`), the same function family that encodes
the training data, so a sample shows what the trained format produces.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from finetune.data.prompts import Prompt, fixed_prompts
from finetune.model.generate import generate, greedy
from finetune.runtime import console, dist


class SamplesCallback(TrainerCallback):
    """Greedy answers to fixed prompts before training, every `every` steps and at the end.

    Every rank generates (with FSDP each forward needs all ranks; greedy keeps them in step); rank 0 writes
    samples.jsonl rows {step, messages, answer, reference} and, when the Trainer reports to wandb, logs a
    table of every sample so far as `samples`."""

    def __init__(self, run_dir: Path, tokenizer, prompts: list[Prompt], every: int, max_new_tokens: int):
        self.path = Path(run_dir) / "samples.jsonl"
        self.sp = tokenizer.sp
        self.prompts = prompts
        self.every = every
        self.gen = greedy(max_new_tokens, tokenizer.pad_id)
        self.rows: list[dict] = []
        self.last_step = -1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.sample(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step >= state.max_steps:
            self.sample(args, state, model)

    def sample(self, args, state, model) -> None:
        if not self.prompts or state.global_step == self.last_step:
            return
        self.last_step = state.global_step
        answers = generate(model, [p.ids for p in self.prompts], self.gen)
        if not state.is_world_process_zero:
            return
        rows = [
            {"step": state.global_step, "messages": p.messages, "answer": self.sp.decode(a), "reference": p.reference}
            for p, a in zip(self.prompts, answers)
        ]
        with self.path.open("a") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        self.rows += rows
        if "wandb" in (args.report_to or []):
            log_wandb_table(self.rows, state.global_step)


def log_wandb_table(rows: list[dict], step: int) -> None:
    """Every sample so far as one table (wandb tables are immutable, so each log holds the full history)."""
    import wandb

    if wandb.run is None:
        return
    table = wandb.Table(
        columns=["step", "prompt", "answer", "reference"],
        data=[[r["step"], r["messages"][-1]["content"], r["answer"], r["reference"] or ""] for r in rows],
    )
    wandb.run.log({"samples": table, "train/global_step": step})


def callbacks(cfg, tokenizer, head: list[dict], run_dir: Path) -> list[TrainerCallback]:
    """The samples callback for a training config, or none when `eval.samples=0` or under FSDP."""
    if cfg.eval.samples and dist.launched_sharding() == "fsdp":
        # FSDP1 keeps the root's parameters (embeddings, norm, lm_head) sharded outside its own forward, and
        # generate() calls the inner model: it cannot run mid-training. Eval loss is unaffected.
        console.info(
            f"samples: off under FSDP; after training run `python finetune/chat.py run={run_dir} prompts=<file.jsonl>`"
        )
        return []
    prompts = fixed_prompts(head, cfg.data, cfg.eval, tokenizer.sp)
    if not prompts:
        return []
    every = cfg.eval.every or cfg.trainer.save_steps
    return [SamplesCallback(run_dir, tokenizer, prompts, every, cfg.eval.max_new_tokens)]
