"""SimPO (Meng et al. 2024) through TRL's CPOTrainer with `loss_type="simpo"` and no behaviour-cloning term
(`cpo_alpha=0`): one model, no reference.

loss = -log sigmoid(beta · (mean log p(chosen) - mean log p(rejected)) - gamma), log-probabilities averaged over
each answer's tokens; `trainer.beta` and `trainer.simpo_gamma` are the paper's beta and gamma. With equal answer
likelihoods (a run's start, from random or equal answers) the loss is log(1 + e^gamma): 0.974 for gamma = 0.5.
Our pairs reach TRL through `pairwise.collate`.
"""

from __future__ import annotations

from pathlib import Path

from finetune.training import pairwise


def check(cfg) -> list[str]:
    """Problems in a SimPO config, found before any weight loads."""
    problems = pairwise.check(cfg, "SimPO")
    if cfg.trainer.simpo_gamma < 0:
        problems.append(
            f"trainer.simpo_gamma={cfg.trainer.simpo_gamma}: the target margin must be >= 0 "
            "(the paper's gamma is 0.5-1.6)"
        )
    return problems


def build(cfg, model, tokenizer, prepared, run_dir: Path):
    pairwise.quiet_notices()
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return pairwise.build(
        CPOTrainer,
        CPOConfig,
        cfg,
        model,
        tokenizer,
        prepared,
        run_dir,
        loss_type="simpo",
        cpo_alpha=0.0,
        simpo_gamma=cfg.trainer.simpo_gamma,
    )
