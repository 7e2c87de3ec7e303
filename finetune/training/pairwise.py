"""What the reference-free pair trainers (ORPO, SimPO) share: our Meta-exact pair ids in the batch layout TRL's
ORPOTrainer and CPOTrainer read, the settings they share, and the checks no reference model makes necessary.

Both trainers re-tokenize `prompt`/`chosen`/`rejected` text with the Hugging Face tokenizer when they are built
(TRL's `tokenize_row`); our pairs carry those as empty strings, so that pass is a no-op we never read, and
`collate` builds the batch from the `llama_*_ids` columns (`data.pairs`): chosen/rejected input ids, attention
masks and labels (-100 on the prompt and on padding). Neither trainer has a reference pass: the model is the
PeftModel with its one adapter, and TRL adds no "ref" adapter.
"""

from __future__ import annotations

import logging
import warnings

from finetune.training.args import callbacks, common_args
from finetune.training.extras import optimizers

NOT_THEIR_COLLATOR = "prediction_step is only implemented for DPODataCollatorWithPadding"


def not_their_collator(record: logging.LogRecord) -> bool:
    return NOT_THEIR_COLLATOR not in record.getMessage()


def quiet_notices() -> None:
    """Two notices these trainers print, each silenced at its exact source (called before TRL's module is
    imported): TRL keeps ORPO and CPO under trl.experimental (pinned to the tested minor, pyproject.toml), and
    their evaluation warns that `collate` is not TRL's DPO collator, whose keys it reproduces
    (tests/unit/test_preference.py holds it to them)."""
    warnings.filterwarnings("ignore", message=r"You are importing from 'trl\.experimental'")
    for name in ("trl.experimental.orpo.orpo_trainer", "trl.experimental.cpo.cpo_trainer"):
        if not_their_collator not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(not_their_collator)


def collate(pad_id: int):
    """chosen_/rejected_ input_ids, attention_mask and labels, right-padded, from our pair columns."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=value)

    def collate_fn(examples: list[dict]) -> dict:
        batch = {}
        for side in ("chosen", "rejected"):
            prompts, answers = [ex["llama_prompt_ids"] for ex in examples], [ex[f"llama_{side}_ids"] for ex in examples]
            batch[f"{side}_input_ids"] = pad([p + a for p, a in zip(prompts, answers)], pad_id)
            batch[f"{side}_attention_mask"] = pad([[1] * (len(p) + len(a)) for p, a in zip(prompts, answers)], 0)
            batch[f"{side}_labels"] = pad([[-100] * len(p) + a for p, a in zip(prompts, answers)], -100)
        return batch

    return collate_fn


def check(cfg, name: str) -> list[str]:
    """Problems every reference-free pair trainer shares."""
    tcfg, problems = cfg.trainer, []
    if tcfg.beta <= 0:
        problems.append(f"trainer.beta={tcfg.beta}: must be > 0")
    if tcfg.precompute_ref:
        problems.append(
            f"trainer.precompute_ref=true with trainer.kind={tcfg.kind}: {name} has no reference model "
            "to precompute; set trainer.precompute_ref=false"
        )
    return problems


def build(trainer_cls, config_cls, cfg, model, tokenizer, prepared, run_dir, **settings):
    """`trainer_cls` (ORPOTrainer or CPOTrainer) over our pairs, with `settings` for its config class."""
    train_ds, eval_ds = prepared.train, prepared.eval
    args = config_cls(
        **common_args(cfg, run_dir, eval_ds is not None),
        beta=cfg.trainer.beta,
        max_length=cfg.data.max_length,  # read only by TRL's own tokenization of the empty text columns
        remove_unused_columns=False,  # our llama_*_ids columns reach `collate`
        **settings,
    )
    return trainer_cls(
        model=model,
        args=args,
        data_collator=collate(tokenizer.pad_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer.hf,
        callbacks=callbacks(cfg, tokenizer, prepared.head, run_dir),
        optimizers=optimizers(cfg, model, args),
    )
