"""Generations for a few fixed prompts during training: samples.jsonl, and a wandb table when wandb is on.

Prompts are token ids from `chat_format.encode_prompt`, the same function family that encodes the training
data, so a sample shows what the trained format produces. `generate` and `read_prompts` are shared with
finetune/chat.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import GenerationConfig, TrainerCallback

from finetune import chat_format, data, sources
from finetune.chat_format import DialogError


@dataclass
class Prompt:
    messages: list[dict]  # system? (user, assistant)* user
    ids: list[int]  # encode_prompt(messages)
    reference: Optional[str] = None  # the dataset's answer, when the prompt comes from a dataset


def to_prompt(sp, messages: list[dict], where: str, reference: Optional[str] = None) -> Prompt:
    try:
        return Prompt(messages, chat_format.encode_prompt(sp, messages), reference)
    except DialogError as exc:
        raise data.DataError(f"{where}: {exc}") from None


def prompt_messages(path: str, system: Optional[str] = None) -> list[tuple[list[dict], str]]:
    """(messages, "file:line") from a JSONL file, one prompt per line: {"prompt": "text"} (one user turn,
    optional "system") or {"messages": [{"role", "content"}, ...]} ending with a user message. `system` goes
    first where a line has no system message of its own. Checked here, before any weights load."""
    out = []
    try:
        for record, where in sources.read_records(path):
            if isinstance(record, dict) and isinstance(record.get("messages"), list):
                messages = [dict(m) if isinstance(m, dict) else m for m in record["messages"]]
            elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
                messages = [{"role": "user", "content": record["prompt"]}]
                if record.get("system"):
                    messages.insert(0, {"role": "system", "content": record["system"]})
            else:
                raise data.DataError(f'{where}: a prompt line needs "prompt" (text) or "messages" '
                                     '([{"role": ..., "content": ...}, ...] ending with a user message)')
            if system and messages and isinstance(messages[0], dict) and messages[0].get("role") != "system":
                messages.insert(0, {"role": "system", "content": system})
            try:
                chat_format.check_dialog(messages, "user")
            except DialogError as exc:
                raise data.DataError(f"{where}: {exc}") from None
            out.append((messages, where))
    except sources.SourceError as exc:
        raise data.DataError(str(exc)) from None
    if not out:
        raise data.DataError(f"{path}: no prompts in the file")
    return out


def read_prompts(path: str, sp, system: Optional[str] = None) -> list[Prompt]:
    return [to_prompt(sp, messages, where) for messages, where in prompt_messages(path, system)]


def check(ecfg) -> list[str]:
    """Problems in `eval.prompts`, found before any weights load."""
    try:
        prompt_messages(ecfg.prompts)
    except data.DataError as exc:
        return [f"eval.prompts: {exc}"]
    return []


def fixed_prompts(dcfg, ecfg, sp) -> list[Prompt]:
    """`eval.samples` prompts: from `eval.prompts`, or the held-out conversations (then the training ones) with
    their last answer removed, kept only where the prompt fits in `data.max_length`."""
    if ecfg.samples == 0:
        return []
    if ecfg.prompts:
        return read_prompts(ecfg.prompts, sp)[: ecfg.samples]
    train, held_out = data.splits(dcfg)
    out = []
    for i, ex in enumerate(held_out + train):
        if "messages" in ex:
            messages, reference = ex["messages"][:-1], ex["messages"][-1]["content"]
        elif "prompt" in ex:  # a preference pair: the prompt, and the chosen answer as the reference
            messages, reference = ex["prompt"], ex["chosen"]
        else:  # raw text (continued pretraining) has no prompt to answer
            continue
        prompt = to_prompt(sp, messages, f"{dcfg.path}: example {i}", reference)
        if len(prompt.ids) <= dcfg.max_length:
            out.append(prompt)
        if len(out) == ecfg.samples:
            break
    return out


def generate(model, prompts: list[list[int]], gen: GenerationConfig, streamer=None) -> list[list[int]]:
    """New token ids for each prompt, one left-padded batch, cut before EOS. Eval mode and no grad for the
    call; the model's train/eval mode is restored after."""
    width = max(map(len, prompts))
    pad = gen.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen, streamer=streamer)
    finally:
        model.train(was_training)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(chat_format.EOS_ID)] if chat_format.EOS_ID in row else row)
    return rows


def greedy(max_new_tokens: int, pad_id: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=chat_format.EOS_ID,
                            pad_token_id=pad_id, bos_token_id=chat_format.BOS_ID, use_cache=True)


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
        rows = [{"step": state.global_step, "messages": p.messages, "answer": self.sp.decode(a),
                 "reference": p.reference} for p, a in zip(self.prompts, answers)]
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
    table = wandb.Table(columns=["step", "prompt", "answer", "reference"],
                        data=[[r["step"], r["messages"][-1]["content"], r["answer"], r["reference"] or ""]
                              for r in rows])
    wandb.run.log({"samples": table, "train/global_step": step})


def callbacks(cfg, tokenizer, run_dir: Path) -> list[TrainerCallback]:
    """The samples callback for a training config, or none when `eval.samples=0` or under FSDP."""
    from finetune import console, model

    if cfg.eval.samples and model.launched_sharding() == "fsdp":
        # FSDP1 keeps the root's parameters (embeddings, norm, lm_head) sharded outside its own forward, and
        # generate() calls the inner model: it cannot run mid-training. Eval loss is unaffected.
        console.info(f"samples: off under FSDP; after training run `python finetune/chat.py run={run_dir} "
                     "prompts=<file.jsonl>`")
        return []
    prompts = fixed_prompts(cfg.data, cfg.eval, tokenizer.sp)
    if not prompts:
        return []
    every = cfg.eval.every or cfg.trainer.save_steps
    return [SamplesCallback(run_dir, tokenizer, prompts, every, cfg.eval.max_new_tokens)]
