"""Packed DPO (`trainer.packing=true` with `trainer.kind=dpo`, model/padding_free.py): a micro-batch's chosen and
rejected sequences run as one padding-free row, and each pair's log-probs, TRL's loss and every LoRA gradient equal
the unpacked (padded) ones."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_fused_lora import assert_close, dpo_trainer, gqa_path, loss_and_grads  # noqa: F401
from finetune.model import padding_free


def sequence_logps(model, b):
    """Each sequence's summed completion log-probs, as TRL's DPO loss reads them (chosen rows, then rejected)."""
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            labels=labels,
            use_cache=False,
            fused_lm_head=True,
        )
    return out.log_probs.sum(dim=1)


@pytest.mark.slow  # TRL's DPO loss over the 32,000-token vocabulary
def test_packed_pairs_give_the_unpacked_log_probs_loss_and_grads(gqa_path, tmp_path):  # noqa: F811
    trainer, model, b = dpo_trainer(gqa_path, tmp_path)
    for p in model.parameters():  # float32 adapters: the comparison that can be exact
        if p.requires_grad:
            p.data = p.data.float()
    mask = b["attention_mask"]
    assert mask.shape[0] == 4 and (mask == 0).any()  # 2 pairs, padded
    step = lambda: trainer.compute_loss(model, b)  # noqa: E731
    want_logps, want = sequence_logps(model, b), loss_and_grads(model, step)

    print(padding_free.enable(model))
    rows = []
    padding_free.decoder(model).layers[0].register_forward_pre_hook(lambda m, a: rows.append(tuple(a[0].shape[:2])))
    got_logps = sequence_logps(model, b)
    assert rows == [(1, int(mask.sum()))]  # one row of the real tokens, no padding
    torch.testing.assert_close(got_logps, want_logps, rtol=1e-5, atol=1e-4)  # per pair: chosen [:2], rejected [2:]
    assert_close(loss_and_grads(model, step), want)
