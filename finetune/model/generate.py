"""Greedy (or sampled) generation from prompt ids, shared by the sample callback, chat.py and export checks."""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from finetune.data.chat_format import BOS_ID, EOS_ID


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
        rows.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    return rows


def greedy(max_new_tokens: int, pad_id: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=EOS_ID,
        pad_token_id=pad_id,
        bos_token_id=BOS_ID,
        use_cache=True,
    )
