"""Fine-tune Llama 2 with LoRA/QLoRA: `accelerate launch finetune/train.py recipe=qlora_13b [key=value ...]`.

`python finetune/train.py recipe=qlora_13b --cfg job` prints the composed config and loads nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from finetune import config, console

config.register()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune import checkpoints, data, dpo, model, preflight, tracking, trainers  # heavy imports after `--cfg job` has returned
    from finetune import plan_report
    from transformers import set_seed

    # Check everything that needs no weights: config, tokenizer, data
    cfg = config.load(dict_cfg)
    console.info(plan_report.check_before_training(cfg))  # memory plan for these GPUs; stops here if it cannot fit
    tokenizer = model.load_tokenizer(cfg.model)
    train_ds, eval_ds, stats = (dpo.load if cfg.trainer.kind == "dpo" else data.load)(cfg.data, tokenizer)
    if cfg.trainer.kind == "sft":  # pad != EOS, EOS trained, one BOS per turn, no empty mask, prompt = prefix
        console.info(preflight.require(tokenizer, train_ds, stats, cfg.data).report())

    # One run directory for every rank; resume from its latest complete checkpoint
    recipe = HydraConfig.get().runtime.choices.get("recipe", "run")
    run_dir, resume = checkpoints.start(cfg.output_dir, f"{recipe}-{cfg.data.name}", cfg.resume, cfg.overwrite)
    checkpoints.prepare(run_dir, dict_cfg, resume)
    tracking.start(cfg.tracking, run_dir, dict_cfg, resumed=resume is not None)  # wandb/tensorboard (rank 0)

    # Load the base model (quantized for QLoRA) and add LoRA
    model.prepare_path(cfg.model, tokenizer)
    base = model.load_base(cfg.model, cfg.quant, trainers.gradient_checkpointing(cfg))
    set_seed(cfg.seed)  # LoRA's random init: the same start in every run, for any number of processes
    peft_model = model.apply_lora(base, cfg.lora, cfg.init_adapter)

    # Train with TRL
    trainer = trainers.build(cfg, peft_model, tokenizer, train_ds, eval_ds, run_dir)
    checkpoints.attach(trainer, run_dir, cfg.trainer.save_total_limit)  # checkpoints complete or absent; exact resume
    console.report_start(trainer, cfg, stats, run_dir, resume)
    trainer.train(resume_from_checkpoint=resume)

    # Save the adapter (+ tokenizer) beside the checkpoints
    adapter_dir = checkpoints.save(trainer, tokenizer, run_dir)
    tracking.finish(cfg.tracking)
    curve = run_dir / "loss.png"
    console.info(f"adapter: {adapter_dir}\nmetrics: {run_dir / 'metrics.jsonl'}"
                 + (f"\nloss curve: {curve}" if curve.is_file() else ""))


if __name__ == "__main__":
    main()
