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

from finetune import config
from finetune.config import methods
from finetune.runtime import console, dist

config.register()


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="train")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    # The config, the data's paths and first records, the run directory: checked before torch loads
    from finetune.data import early
    from finetune.runs import rundir

    early.check(dict_cfg)
    if found := rundir.check(dict_cfg):
        raise config.ConfigError(found)
    if variants := config.variants_line(dict_cfg):  # DoRA, rsLoRA, PiSSA/OLoRA/LoftQ, LoRA+, NEFTune
        console.info(variants)

    from finetune.training import stop  # torch: after the checks above

    run: dict = {}  # the config, run directory and trainer once they exist: what Ctrl-C and a full disk report
    overrides = list(HydraConfig.get().overrides.task)
    try:
        train(dict_cfg, run)
    except KeyboardInterrupt:  # every checkpoint is complete or absent: nothing complete is lost
        stop.say(stop.interrupted(run.get("trainer"), run.get("dir"), overrides))
        sys.exit(130)
    except Exception as exc:
        if not (full := stop.full(exc)) or "dir" not in run:
            raise
        raise stop.disk_full(full, run["dir"], run["cfg"], run["disk"], overrides, run.get("trainer")) from None


def train(dict_cfg: DictConfig, run: dict) -> None:
    # heavy imports after `--cfg job` has returned and the checks above passed
    from transformers import set_seed

    from finetune.data import load as data
    from finetune.data import preflight
    from finetune.model import base, checkpointing, fused_layers, lora, padding_free, variants
    from finetune.model import tokenizer as tok
    from finetune.planning import budget
    from finetune.planning import report as plan
    from finetune.runs import checkpoints, inputs, rundir
    from finetune.training import args, checks, kinds, stop, tracking

    # Check everything that needs no weights, before anything is written: config, model, data, memory plan, disk
    recipe = HydraConfig.get().runtime.choices.get("recipe", "run")
    run["cfg"] = cfg = checks.before_weights(dict_cfg, recipe, training=True)
    layers = plan.budget_plan(cfg)  # trainer.memory_budget: which layers to checkpoint, fastest that fits
    console.info(layers.line() if layers else plan.check_before_training(cfg))  # stops here if it cannot fit
    run["disk"] = budget.disk_bytes(plan.setup(cfg, 1, "ddp"))  # one checkpoint, the final adapter
    stop.room(cfg, run["disk"])  # the disk holds the checkpoints kept at once and the adapter
    if not cfg.model.random_init:  # the base first: a local folder, or a Hub base's config.json (one request)
        base.prepare_path(cfg.model, None)  # reachable, or one error before any tokenizer or data download
    tokenizer = tok.load_tokenizer(cfg.model)
    if cfg.model.random_init:
        base.prepare_path(cfg.model, tokenizer)  # random weights written once, by one process per machine
    prepared = data.load(cfg.data, tokenizer, cfg.trainer.kind)  # read once: tokens, preflight sample, prompts
    kinds.check_data(cfg, prepared)  # what the method cannot learn from (KTO: answers of one kind only)
    console.info(preflight.require(tokenizer, prepared, cfg.data).report())  # pad != EOS, EOS trained, ...

    # One run directory for every rank; resume from its latest complete checkpoint
    run_dir, resume = rundir.start(cfg.output_dir, f"{recipe}-{cfg.data.name}", cfg.resume, cfg.overwrite)
    run["dir"] = run_dir
    rundir.prepare(run_dir, dict_cfg, resume)
    inputs.write(run_dir, prepared.head, cfg)  # what export, chat and evaluate read instead of the data
    tracking.start(cfg.tracking, run_dir, dict_cfg, resumed=resume is not None)  # wandb/tensorboard (rank 0)

    # Load the base model (quantized for QLoRA) and add LoRA
    model = base.load_base(cfg.model, cfg.quant, args.gradient_checkpointing(cfg))
    set_seed(cfg.seed)  # LoRA's random init: the same start in every run, for any number of processes
    peft_model = lora.apply_lora(model, cfg.lora, cfg.init_adapter, cfg.model)
    if cfg.lora.init in variants.CONVERTED:  # PiSSA/OLoRA: the final save converts against this starting point
        variants.save_initial(peft_model, run_dir / rundir.LORA_INIT, dist.is_main())
    if cfg.trainer.fused_lora:  # Llama's attention and MLP instances replaced by fused LoRA ones (or why not)
        console.info(fused_layers.apply(peft_model))
    if cfg.trainer.packing and methods.METHODS[cfg.trainer.kind].packing == "padding_free":  # one row a micro-batch
        console.info(padding_free.enable(peft_model))
    if layers:  # the budget's per-layer checkpointing, inputs offloaded to pinned CPU memory where planned
        checkpointing.apply(peft_model, layers.checkpointed(), layers.setup.offload_checkpoints)

    # Train with TRL (the builder the method's record names: SFT, DPO, ORPO, SimPO, KTO)
    run["trainer"] = trainer = kinds.build(cfg, peft_model, tokenizer, prepared, run_dir)
    checkpoints.attach(trainer, run_dir, cfg.trainer.save_total_limit)  # checkpoints complete or absent; exact resume
    console.info(start_report(trainer, cfg, prepared.stats, run_dir, resume))
    checkpoints.train(trainer, resume)  # trainer.train, resumed; nothing left to train after the last step

    # Save the adapter (+ tokenizer, model card) beside the checkpoints
    adapter_dir = checkpoints.save(trainer, tokenizer, run_dir)
    tracking.finish(cfg.tracking)
    curve = run_dir / "loss.png"
    console.info(
        f"adapter: {adapter_dir}\nmetrics: {run_dir / 'metrics.jsonl'}"
        + (f"\nloss curve: {curve}" if curve.is_file() else "")
        + (
            f"\ntensorboard: tensorboard --logdir {run_dir / 'tensorboard'}"
            if cfg.tracking.backend == "tensorboard"
            else ""
        )
        + "\n"
        + next_steps(run_dir)
    )


def next_steps(run_dir: Path) -> str:
    """The commands that read this run, spelled the way this one was started (`python finetune/train.py`, a path
    from another folder, or the installed `finetune-train`)."""
    me = Path(sys.argv[0])
    here = f"python {me.parent / '{}.py'}" if me.name == "train.py" else "finetune-{}"
    return (
        f"next: try it:       {here.format('chat')} run={run_dir}\n"
        f"      score it:     {here.format('evaluate')} run={run_dir}\n"
        f"      merge it:     {here.format('export')} run={run_dir} merge=true"
    )


def start_report(trainer, cfg, stats, run_dir, resume) -> str:
    """Effective batch, data counts and where the run goes, once."""
    args = trainer.args
    world = args.world_size
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return (
        f"run: {run_dir}\n"
        f"model: {cfg.model.name} ({cfg.model.path}), quant={cfg.quant.mode}, LoRA r={cfg.lora.r}, "
        f"{trainable:,} trainable parameters\n"
        f"data: {cfg.data.name}: {stats.summary()}\n"
        f"effective batch: {effective} = {args.per_device_train_batch_size} micro x "
        f"{args.gradient_accumulation_steps} accumulation x {world} processes"
        + (f"\nresuming from {resume}" if resume else "")
    )


if __name__ == "__main__":
    main()
