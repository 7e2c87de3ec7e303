"""What a run may add to any trainer's loop: LoRA+ learning rates (peft's optimizer) and NEFTune's embedding noise
(transformers' Trainer, which every TRL trainer is), with the combinations that would silently misbehave refused.
"""

from __future__ import annotations

from finetune.config.methods import METHODS, names
from finetune.runtime.dist import launched_sharding


def check(cfg) -> list[str]:
    """Problems with `trainer.loraplus_lr_ratio` and `trainer.neftune_alpha`, found before any weight loads."""
    tcfg, found = cfg.trainer, []
    if tcfg.loraplus_lr_ratio is not None:
        if tcfg.loraplus_lr_ratio < 1:
            found.append(
                f"trainer.loraplus_lr_ratio={tcfg.loraplus_lr_ratio}: LoRA+ trains lora_B this many times "
                "faster than lora_A, so it must be >= 1 (the paper uses 2-16; 16 for Llama)"
            )
        if (sharding := launched_sharding()) in ("fsdp", "zero2", "zero3"):
            found.append(
                f"trainer.loraplus_lr_ratio under {sharding}: LoRA+ hands the Trainer a ready optimizer, "
                "which transformers refuses with FSDP and DeepSpeed; launch with DDP, or drop "
                "trainer.loraplus_lr_ratio"
            )
    if tcfg.neftune_alpha is not None:
        if tcfg.neftune_alpha <= 0:
            found.append(
                f"trainer.neftune_alpha={tcfg.neftune_alpha}: must be > 0 (the paper uses 5-15), or null for no noise"
            )
        if tcfg.kind in METHODS and METHODS[tcfg.kind].reference:  # a reference pass through the same model
            free = names(lambda m: not m.reference)
            found.append(
                f"trainer.neftune_alpha with trainer.kind={tcfg.kind}: the noise would reach the reference "
                "pass too (the same model with a frozen adapter), so the policy would be compared with "
                f"a noisy reference; use it with {', '.join(free[:-1])} or {free[-1]}"
            )
        if tcfg.packing:
            found.append(
                "trainer.neftune_alpha with trainer.packing=true: NEFTune scales its noise by "
                "1/sqrt(sequence length x hidden), and a packed row holds many examples, so each would get "
                "far less noise than alpha means; set trainer.packing=false"
            )
    return found


def optimizers(cfg, model, args) -> tuple:
    """The Trainer's `optimizers` argument: LoRA+'s (peft's `create_loraplus_optimizer`, over the optimizer class
    and settings `trainer.optim` names) when `trainer.loraplus_lr_ratio` is set, else (None, None) so the Trainer
    builds its own. The scheduler is the Trainer's either way; it scales every group's learning rate alike."""
    if cfg.trainer.loraplus_lr_ratio is None:
        return None, None
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    optimizer = create_loraplus_optimizer(
        model,
        cls,
        lr=args.learning_rate,
        loraplus_weight_decay=args.weight_decay,
        loraplus_lr_ratio=cfg.trainer.loraplus_lr_ratio,
        **kwargs,
    )
    return optimizer, None
