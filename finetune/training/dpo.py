"""Direct Preference Optimization through TRL's DPOTrainer: Meta-exact tokens, no second model in memory.

The reference policy is never a second copy of the base. Given our PeftModel and no `ref_model`, TRL 1.16
copies the "default" adapter into a frozen adapter named "ref" on the same base and evaluates the reference
through it: a new LoRA copies as zeros (B = 0), so the reference is the base; an `init_adapter` (an SFT
adapter) copies as itself, so the reference is the SFT policy. Either way the extra memory is one adapter.

The pairs arrive as our ids (`data.pairs`: TRL's own re-tokenization differs from Meta's encoding) and reach
TRL's `DataCollatorForPreference` through `collate`. Reference log-probs can be precomputed once
(`trainer.precompute_ref=true`): TRL writes its table beside the cached pairs ($FINETUNE_CACHE/data/...),
named by a hash of the dataset and of every model weight (base + adapters), so a later run with the same
data, model and adapter finds it and skips the reference pass. tests/unit/test_dpo.py holds TRL to this
contract (the collator's import path and input keys); pyproject pins trl to the tested minor.
"""

from __future__ import annotations

from pathlib import Path

from finetune.runtime import console
from finetune.training.args import callbacks, common_args
from finetune.training.extras import optimizers


def loss_types() -> tuple[str, ...]:
    """TRL's DPO losses (sigmoid is the DPO paper's; ipo, hinge, robust...): the `loss_type == "..."` branches of
    DPOTrainer's loss, which TRL exposes as no list (its DPOConfig accepts any string; the trainer raises on an
    unknown one only inside the first training step)."""
    import ast
    import inspect
    import textwrap

    from trl import DPOTrainer

    tree = ast.parse(textwrap.dedent(inspect.getsource(DPOTrainer._compute_loss)))
    return tuple(
        node.comparators[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and isinstance(node.left, ast.Name)
        and node.left.id == "loss_type"
        and isinstance(node.ops[0], ast.Eq)
        and isinstance(node.comparators[0], ast.Constant)
    )


def check(cfg) -> list[str]:
    """Problems in a DPO config, found before any weight loads."""
    tcfg, problems = cfg.trainer, []
    if tcfg.loss_type not in (valid := loss_types()):
        problems.append(f"trainer.loss_type={tcfg.loss_type}: use one of {', '.join(valid)}")
    if tcfg.beta <= 0:
        problems.append(f"trainer.beta={tcfg.beta}: must be > 0 (0.1 is the DPO paper's; 0.01-0.5 is usual)")
    return problems


def collate(pad_id: int):
    """TRL's DataCollatorForPreference over our Meta-exact id columns (and cached reference log-probs)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    pad = DataCollatorForPreference(pad_token_id=pad_id)

    def collate_fn(examples: list[dict]) -> dict:
        return pad(
            [
                {
                    "prompt_ids": ex["llama_prompt_ids"],
                    "chosen_ids": ex["llama_chosen_ids"],
                    "rejected_ids": ex["llama_rejected_ids"],
                    **{k: ex[k] for k in ("ref_chosen_logps", "ref_rejected_logps") if k in ex},
                }
                for ex in examples
            ]
        )

    return collate_fn


def reference_tables(train_ds) -> set[str]:
    """TRL's cached reference log-prob tables beside the training pairs (none when `data.cache=false` keeps
    the pairs in memory)."""
    if not train_ds.cache_files:
        return set()
    folder = Path(train_ds.cache_files[0]["filename"]).parent
    return {p.name for p in folder.glob("cache-*.arrow")}


def build(cfg, model, tokenizer, prepared, run_dir: Path):
    """TRL's DPOTrainer on our PeftModel: reference = the same model with the frozen "ref" adapter."""
    from trl import DPOConfig, DPOTrainer

    tcfg, train_ds, eval_ds = cfg.trainer, prepared.train, prepared.eval
    args = DPOConfig(
        **common_args(cfg, run_dir, eval_ds is not None),
        beta=tcfg.beta,
        loss_type=[tcfg.loss_type],
        max_length=None,  # lengths are enforced when tokenizing (data.max_length, data.max_prompt_length)
        precompute_ref_log_probs=tcfg.precompute_ref,
        remove_unused_columns=False,  # our llama_*_ids columns reach `collate`
    )
    before = reference_tables(train_ds)
    trainer = DPOTrainer(
        model=model,
        args=args,
        data_collator=collate(tokenizer.pad_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer.hf,
        callbacks=callbacks(cfg, tokenizer, prepared.head, run_dir),
        optimizers=optimizers(cfg, model, args),
    )
    if tcfg.precompute_ref:
        made = reference_tables(train_ds) - before
        console.info(
            f"reference log-probs: {'computed and cached' if made else 'reused from the cache'} in "
            f"{Path(train_ds.cache_files[0]['filename']).parent}"
        )
    return trainer
