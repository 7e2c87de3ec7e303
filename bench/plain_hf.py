"""The baseline arm: plain Hugging Face, as a user writes it without this toolkit (no finetune.* code)."""

from __future__ import annotations

from pathlib import Path

import torch

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def trainer(a, quant_mode: str, model_dir: str, ds, run_dir: Path, lora_settings: dict):
    """The baseline: AutoModelForCausalLM (SDPA) + bitsandbytes NF4 + peft's prepare_model_for_kbit_training +
    get_peft_model + transformers Trainer with activation checkpointing, hyperparameters as in our arms."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Trainer, default_data_collator

    base = load(quant_mode, model_dir)
    if quant_mode != "none":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    lora = LoraConfig(
        r=lora_settings["r"],
        lora_alpha=lora_settings["alpha"],
        lora_dropout=lora_settings["dropout"],
        target_modules=list(LLAMA_LINEARS),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)  # the same LoRA A matrices in every arm, so grad norms compare step by step
    return Trainer(
        model=get_peft_model(base, lora),
        args=training_args(a, run_dir),
        train_dataset=ds,
        data_collator=default_data_collator,
    )


def load(quant_mode: str, model_dir: str):
    """AutoModelForCausalLM (SDPA) in bf16 (float32 on a CPU), 4-bit NF4 with double quantization through
    bitsandbytes unless `quant_mode` is none: how a user loads a QLoRA base without this toolkit."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs = dict(dtype=dtype, attn_implementation="sdpa")
    if quant_mode != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": 0} if cuda else "cpu"
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def train_steps(a) -> int:
    """Optimizer steps an arm runs: warmup + timed, and with --profile one more, taken under the profiler."""
    return a.warmup + a.steps + int(bool(getattr(a, "profile", False)))


def training_args(a, run_dir: Path, gradient_checkpointing: bool = True):
    """The Trainer's arguments, shared with the unsloth arm (which checkpoints its own way)."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.grad_accum,
        max_steps=train_steps(a),
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1e9,
        optim="adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=42,
        data_seed=42,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
    )
