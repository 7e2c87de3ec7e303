"""Through TRL's real collator: exactly the assistant tokens plus each turn's EOS are trained, on the bundled
OpenAssistant conversations (multi-turn), with pad distinct from EOS and one BOS per turn."""

from __future__ import annotations

import dataclasses

import pytest
import sentencepiece as spm

from tests.conftest import ROOT, compose
from finetune import config
from finetune.data import examples
from finetune.data import load as data_load
from finetune.model import base as model_base
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.training import kinds


@pytest.fixture(scope="module")
def batch_and_examples(tmp_path_factory):
    cfg = config.load(
        compose(
            "recipe=tiny_lora",
            "data.max_samples=12",
            "data.eval_fraction=0",
            "data.max_length=4096",
            "trainer.micro_batch_size=12",
            "trainer.max_steps=1",
        )
    )
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    prepared = data_load.load(cfg.data, tok)
    model_base.prepare_path(cfg.model, tok)
    peft_model = lora.apply_lora(model_base.load_base(cfg.model, cfg.quant), cfg.lora)
    run_dir = tmp_path_factory.mktemp("labels")
    trainer = kinds.build(cfg, peft_model, tok, dataclasses.replace(prepared, eval=None), run_dir)
    batch = next(iter(trainer.get_train_dataloader()))
    return batch, examples.examples(cfg.data), tok


def answers_from_labels(input_ids, labels):
    """Contiguous runs of trained positions, as token lists."""
    runs, cur = [], []
    for tid, lab in zip(input_ids, labels):
        if lab != -100:
            assert lab == tid
            cur.append(lab)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_trained_tokens_are_exactly_the_answers_plus_eos(batch_and_examples):
    batch, examples, tok = batch_and_examples
    sp = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
    by_first_prompt = {ex["messages"][0]["content"]: ex for ex in examples}
    multi_turn = 0
    for ids, labels, mask in zip(
        batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ):
        n = sum(mask)
        ids, labels = ids[:n], labels[:n]
        runs = answers_from_labels(ids, labels)
        # which conversation is this? the first user turn, decoded independently of our encoder
        first_user = sp.decode(ids[1 : ids.index(2) if 2 in ids else n]).split("[/INST]")[0]
        ex = by_first_prompt[first_user.removeprefix("[INST]").strip()]
        answers = [m["content"].strip() for m in ex["messages"] if m["role"] == "assistant"]
        assert len(runs) == len(answers)
        for run, answer in zip(runs, answers):
            assert run[-1] == 2, "each trained answer ends with the EOS id"
            assert run[-2] == 29871 and sp.decode(run[:-2]) == answer  # Meta: "{answer} " + EOS; " " is piece 29871
        assert ids.count(1) == len(answers) and ids[0] == 1, "one BOS per turn, no double BOS"
        multi_turn += len(answers) > 1
    assert multi_turn >= 1, "the sample must include a multi-turn conversation"


def test_pad_is_not_eos_and_padding_is_never_trained(batch_and_examples):
    batch, _, tok = batch_and_examples
    assert tok.pad_id != tok.hf.eos_token_id
    padded = batch["attention_mask"] == 0
    assert padded.any(), "the batch should contain padding"
    assert (batch["labels"][padded] == -100).all()
    assert (batch["input_ids"][padded] == tok.pad_id).all()
