"""Packing (`trainer.packing=true`: TRL's best-fit packing, padding-free rows with position ids) on SDPA: a packed row
gives the loss of its documents run one by one, and no token sees another document."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tests.conftest import compose
from finetune import config
from finetune.data.load import Prepared
from finetune.data.stats import Stats
from finetune.model import base as model_base
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.training import sft as sft_trainer

LENGTHS = (37, 53, 29)  # three documents of different lengths in one row


@pytest.fixture(scope="module")
def tiny():
    """The tiny Llama 2 architecture in float32 with SDPA; a large init so attention is far from uniform."""
    from transformers import AutoModelForCausalLM

    cfg = config.load(compose("recipe=tiny_lora"))
    hf_cfg = model_base.llama_config(cfg.model)
    hf_cfg.initializer_range = 0.3
    hf_cfg.use_cache = False  # as model.load_base sets it: with a KV cache transformers ignores the packing
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32, attn_implementation="sdpa")
    return cfg, m.eval()


def documents(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in LENGTHS:
        ids = torch.randint(3, 32000, (n,), generator=g).tolist()
        labels = [-100 if i < n // 3 else t for i, t in enumerate(ids)]  # a prompt third, not trained
        docs.append({"input_ids": ids, "labels": labels})
    return docs


def packed(docs: list[dict]) -> dict:
    """The batch TRL's SFTTrainer feeds the model when packing is on (padding-free collator)."""
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(docs)


def test_packed_loss_equals_the_documents_run_one_by_one(tiny):
    _, m = tiny
    docs = documents()
    with torch.no_grad():
        loss_packed = m(**packed(docs)).loss
        total, count = 0.0, 0
        for d in docs:
            n = sum(lbl != -100 for lbl in d["labels"][1:])  # targets after the shift
            loss = m(input_ids=torch.tensor([d["input_ids"]]), labels=torch.tensor([d["labels"]])).loss
            total, count = total + loss.item() * n, count + n
    assert abs(loss_packed.item() - total / count) < 1e-5


def test_no_token_attends_across_a_packing_boundary(tiny):
    _, m = tiny
    docs, changed = documents(), documents()
    changed[0]["input_ids"] = [t + 1 for t in changed[0]["input_ids"]]  # perturb only the first document
    first = LENGTHS[0]
    with torch.no_grad():
        a, b = m(**packed(docs)).logits[0], m(**packed(changed)).logits[0]
        assert (a[:first] - b[:first]).abs().max() > 1e-2  # the perturbation is visible where it belongs
        assert torch.allclose(a[first:], b[first:], atol=1e-5)  # documents 2 and 3 never saw document 1
        # the check can fail: the same row without position ids is one causal sequence, and it leaks
        plain = {k: v for k, v in packed(docs).items() if k == "input_ids"}
        plain_changed = {k: v for k, v in packed(changed).items() if k == "input_ids"}
        leak = (m(**plain).logits[0, first:] - m(**plain_changed).logits[0, first:]).abs().max()
        assert leak > 1e-2


def test_packing_knob_reaches_trl_as_padding_free_rows(tiny, tmp_path):
    from datasets import Dataset

    cfg, m = tiny
    cfg = dataclasses.replace(
        cfg,
        trainer=dataclasses.replace(
            cfg.trainer, packing=True, micro_batch_size=2, max_steps=1, gradient_checkpointing=False
        ),
    )
    cfg.data.max_length = 128
    docs = documents()
    ds = Dataset.from_dict(
        {
            "input_ids": [d["input_ids"] for d in docs],
            "assistant_masks": [[int(lbl != -100) for lbl in d["labels"]] for d in docs],
        }
    )
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    peft_model = lora.apply_lora(m, cfg.lora)
    trainer = sft_trainer.build(cfg, peft_model, tok, Prepared(ds, None, Stats()), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one padding-free row
    starts = (batch["position_ids"][0] == 0).sum().item()
    assert starts == 3 and batch["input_ids"].shape[1] == sum(LENGTHS)  # all three share one 128-token pack
