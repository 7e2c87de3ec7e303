"""Odds Ratio Preference Optimization (Hong et al. 2024) through TRL's ORPOTrainer: one model, no reference.

loss = NLL(chosen) - beta · log sigmoid(log odds(chosen) - log odds(rejected)), odds from the length-averaged
log-probability of each answer; `trainer.beta` is the paper's lambda. TRL's ORPOTrainer takes the NLL over every
attended token of the chosen sequence, prompt included, as the ORPO authors' code does by default
(xfactlab/orpo, `--disable_prompt_loss` off); `collate` cannot leave the prompt out without changing attention.
With answers the model scores alike (a run's start from random weights), log odds ≈ 0 and the loss is the
chosen NLL + beta·ln 2. Our pairs reach TRL through `pairwise.collate`.
"""

from __future__ import annotations

from pathlib import Path

from finetune.training import pairwise


def check(cfg) -> list[str]:
    """Problems in an ORPO config, found before any weight loads."""
    return pairwise.check(cfg, "ORPO")


def build(cfg, model, tokenizer, prepared, run_dir: Path):
    pairwise.quiet_notices()
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return pairwise.build(
        ORPOTrainer, ORPOConfig, cfg, model, tokenizer, prepared, run_dir, padding_value=tokenizer.pad_id
    )
