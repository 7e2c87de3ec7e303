"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024) through TRL's KTOTrainer: single answers marked good or
bad (`data.unpaired`), no pairs needed.

The reference is the same model with a frozen copy of the starting adapter, as for DPO (TRL adds it to our
PeftModel): the base for a new LoRA, the SFT policy with `init_adapter`. KTO's KL term is estimated from
mismatched prompt/answer sequences; TRL builds them when it tokenizes, but our examples carry Meta-exact ids
(`llama_prompt_ids`, `llama_completion_ids`), so `collate` builds them per micro-batch: each prompt with the
answer of the nearest earlier example whose prompt differs (the same cyclic shift for the whole batch, so the
mismatched answers are the batch's own answers, as TRL pairs them). Pairs split into a thumbs-up and a
thumbs-down answer share a prompt; a shift of one would pair such a prompt with its own answer.
At step 0 the policy equals the reference: every log-ratio and the KL are 0 and each loss term is
1 - sigmoid(0) = 0.5, so the loss starts at 0.5 (desirable/undesirable weights 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune.training.args import callbacks, common_args
from finetune.training.extras import optimizers


def loss_types() -> tuple[str, ...]:
    """TRL's KTO losses, the choices its KTOConfig declares (kto, apo_zero_unpaired)."""
    from trl import KTOConfig

    return tuple(next(f for f in dataclasses.fields(KTOConfig) if f.name == "loss_type").metadata["choices"])


def shift(prompts: list[list[int]]) -> int:
    """The smallest cyclic shift k >= 1 that gives every example of the batch an answer written for another prompt
    (1 when none does: one example, or every prompt the same)."""
    n = len(prompts)
    return next((k for k in range(1, n) if all(prompts[i] != prompts[i - k] for i in range(n))), 1)


def collate(pad_id: int):
    """TRL's DataCollatorForUnpairedPreference over our id columns, with the KL answers made here."""
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    pad = DataCollatorForUnpairedPreference(pad_token_id=pad_id)

    def collate_fn(examples: list[dict]) -> dict:
        prompts = [ex["llama_prompt_ids"] for ex in examples]
        answers = [ex["llama_completion_ids"] for ex in examples]
        k = shift(prompts)
        return pad(
            [
                {"prompt_ids": p, "completion_ids": a, "KL_completion_ids": answers[i - k], "label": ex["label"]}
                for i, (p, a, ex) in enumerate(zip(prompts, answers, examples))
            ]
        )

    return collate_fn


def check(cfg) -> list[str]:
    """Problems in a KTO config, found before any weight loads."""
    tcfg, problems = cfg.trainer, []
    if tcfg.loss_type not in (valid := loss_types()):
        problems.append(f"trainer.loss_type={tcfg.loss_type} with trainer.kind=kto: use one of {', '.join(valid)}")
    if tcfg.beta <= 0:
        problems.append(f"trainer.beta={tcfg.beta}: must be > 0 (0.1 is the KTO paper's)")
    if min(tcfg.desirable_weight, tcfg.undesirable_weight) <= 0:
        problems.append(
            f"trainer.desirable_weight={tcfg.desirable_weight}, trainer.undesirable_weight="
            f"{tcfg.undesirable_weight}: both must be > 0"
        )
    if tcfg.loss_type == "kto" and tcfg.micro_batch_size < 2:
        problems.append(
            "trainer.micro_batch_size=1 with KTO: its KL term pairs each prompt with another example's "
            "answer from the same micro-batch; use trainer.micro_batch_size >= 2"
        )
    if tcfg.precompute_ref:
        problems.append(
            "trainer.precompute_ref=true with trainer.kind=kto: not wired for KTO (its KL answers are "
            "formed per micro-batch by our collator); set trainer.precompute_ref=false"
        )
    return problems


def data_problems(cfg, prepared) -> list[str]:
    """Training data with answers of one kind only, found after tokenizing and before any weight loads: KTO
    learns from the contrast between answers marked good and bad (TRL would only print a weighting hint and
    train on one side of the loss)."""
    labels = prepared.train["label"]
    good = sum(1 for x in labels if x)
    bad = len(labels) - good
    if good and bad:
        return []
    return [
        f"data={cfg.data.name} ({cfg.data.path}): KTO needs answers marked good and answers marked bad; the "
        f"training split has {good} desirable (label true) and {bad} undesirable (label false). Add examples "
        f"marked {'false' if good else 'true'}, or train on good answers alone with SFT (trainer=sft and "
        "data.adapter=messages)"
    ]


def build(cfg, model, tokenizer, prepared, run_dir: Path):
    """TRL's KTOTrainer on our PeftModel: reference = the same model with the frozen "ref" adapter."""
    from trl import KTOConfig, KTOTrainer

    tcfg, train_ds, eval_ds = cfg.trainer, prepared.train, prepared.eval
    args = KTOConfig(
        **common_args(cfg, run_dir, eval_ds is not None),
        beta=tcfg.beta,
        loss_type=tcfg.loss_type,
        desirable_weight=tcfg.desirable_weight,
        undesirable_weight=tcfg.undesirable_weight,
        max_length=None,  # lengths are enforced when tokenizing (data.max_length, data.max_prompt_length)
        remove_unused_columns=False,  # our llama_*_ids columns reach `collate`
    )
    return KTOTrainer(
        model=model,
        args=args,
        data_collator=collate(tokenizer.pad_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer.hf,
        callbacks=callbacks(cfg, tokenizer, prepared.head, run_dir),
        optimizers=optimizers(cfg, model, args),
    )
