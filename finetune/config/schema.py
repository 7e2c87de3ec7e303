"""The typed config schema: every key, its type, its default and why (fixed sets of spellings: `choices`).

OmegaConf checks a composed config against these dataclasses, so a misspelled key, a wrong type or a value
outside a choice fails with the key's name before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ArchConfig:
    """The Llama 2 architecture; used for `random_init` and by the planner (no download needed)."""

    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5


@dataclass
class RopeScalingConfig:
    """A longer context than the base was pretrained with, through transformers' own RoPE parameters
    (model/rope.py); the trained scaling travels into merged/config.json and the GGUF."""

    type: str | None = None  # null: as pretrained | linear (position interpolation) | dynamic (NTK) | yarn
    factor: float = 1.0  # context = original_context x factor (4096 x 4 = 16384)
    original_context: int | None = None  # the pretrained context; null: model.arch.max_position_embeddings
    beta_fast: float | None = None  # YaRN: rotations above which dimensions extrapolate (null: 32)
    beta_slow: float | None = None  # YaRN: rotations below which dimensions interpolate (null: 1)
    attention_factor: float | None = None  # YaRN: logit temperature (null: 0.1 ln(factor) + 1)


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING  # hub id (meta-llama/Llama-2-13b-hf) or a local folder
    revision: str | None = None
    tokenizer: str | None = None  # folder or hub id holding tokenizer.model; default: `path`
    chat: bool = False  # a -chat checkpoint (trained on Meta's [INST] format)
    dtype: str = "bfloat16"  # weights and compute on a GPU; on a CPU training runs in float32
    attn_implementation: str = "sdpa"
    random_init: bool = False  # real architecture, random weights, no download (dry runs, benchmarks)
    seed: int = 0  # seed of the random weights
    arch: ArchConfig = field(default_factory=ArchConfig)
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)  # longer context: model/rope.py


@dataclass
class QuantConfig:
    mode: str = "none"  # none | nf4 (QLoRA) | fp4 | int8
    double_quant: bool = True  # quantize the 4-bit scales too: ~0.37 bit/param saved
    storage_dtype: str | None = None  # 4-bit storage dtype; FSDP needs it equal to the compute dtype
    upcast_fp32: bool = True  # peft casts embeddings, norms, lm_head to float32 (steadier in fp16); false
    #                           keeps model.dtype: ~0.5 GB less (7B), a bf16 residual stream, faster


@dataclass
class LoraConfig:
    r: int = 16  # higher: more capacity, more memory
    alpha: int = 32  # scale = alpha / r
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))
    bias: str = "none"
    use_dora: bool = False  # DoRA: a trained magnitude per output row times the LoRA-updated direction (QDoRA on nf4)
    use_rslora: bool = False  # rsLoRA: scale alpha/sqrt(r) instead of alpha/r (steadier at large r)
    init: str = "default"  # default | gaussian | pissa | olora (16-bit base) | loftq (nf4 base): model/variants.py
    train_embeddings_and_norms: bool = False  # LongLoRA: input embeddings and every RMSNorm trained in full
    #                                           beside LoRA (peft modules_to_save; saved in the adapter, merged exactly)


@dataclass
class FieldsConfig:
    """Where your records keep what an adapter reads (`data.fields.prompt=question`); dots reach into nested
    records (`ticket.question`, `answers.0.text`). Unset: the field of that name. `data=jsonl` (adapter `fields`)
    reads prompt (+ input, system) and response, or prompt, chosen and rejected."""

    prompt: str | None = None
    input: str | None = None
    response: str | None = None
    system: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    text: str | None = None  # adapter text (continued pretraining)
    instruction: str | None = None  # alpaca, self_instruct
    output: str | None = None  # alpaca
    instances: str | None = None  # self_instruct
    messages: str | None = None  # messages
    conversations: str | None = None  # sharegpt
    label: str | None = None  # unpaired (KTO): true for a thumbs-up answer, false for a thumbs-down one


@dataclass
class DataConfig:
    name: str = MISSING
    adapter: str = MISSING  # a name in finetune.data.adapters.ADAPTERS
    path: str = MISSING  # file, folder or hub dataset id
    split: str = "train"
    revision: str | None = None
    eval_fraction: float = 0.0
    eval_path: str | None = None
    max_samples: int | None = None
    seed: int = 0  # shuffle seed (deterministic)
    max_length: int = 1024
    too_long: str = "drop"  # drop | truncate (keep whole turns that fit; cut the answer only if one turn is too long;
    #                         counted)
    max_prompt_length: int | None = None  # DPO: pairs whose prompt is longer are dropped (counted)
    system_prompt: str | None = None
    train_on: str = "all"  # all assistant turns, or `last` only
    fields: FieldsConfig = field(default_factory=FieldsConfig)  # our field name -> yours: data.fields.prompt=question
    invalid: str = "error"  # error | skip: records that break the format (roles out of order...) stop or are counted
    cache: bool = True  # reuse tokenized data from $FINETUNE_CACHE/data when nothing that changes the tokens changed
    num_proc: int | None = None  # processes that tokenize (same tokens for any number); null: every core this
    #                                 process may use. Tokenizing is CPU-bound: prepare.py on a CPU box before GPU time


@dataclass
class TrainerConfig:
    kind: str = "sft"  # a method of finetune/config/methods.py: sft, dpo, orpo, simpo or kto
    learning_rate: float = 2e-4
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    optim: str = "adamw_torch"
    num_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_epochs
    micro_batch_size: int = 1  # per device; effective batch = micro x grad_accum x world size
    grad_accum: int = 16
    gradient_checkpointing: bool | None = None  # None: on with CUDA, off on CPU
    packing: bool = False  # SFT: TRL best-fit packing into padding-free rows; DPO: one padding-free row a micro-batch
    liger: bool = False  # Liger Triton kernels (RMSNorm, RoPE, SwiGLU): faster, less activation memory;
    #                      CUDA only (ignored on a CPU); needs `pip install liger-kernel`
    activation_offloading: bool = False  # saved activations wait in pinned CPU memory (TRL): less GPU
    #                                      memory for PCIe traffic; pays off without checkpointing
    fused_lora: bool = False  # fused LoRA autograd functions for q/k/v, o and the MLP (model/fused.py): peft's math,
    #                           fewer saved tensors and kernels; needs lora.dropout=0 (else says why, runs peft's)
    memory_budget: str | None = None  # e.g. 40GB, or auto (the GPU's free memory): the planner picks which layers
    #                                      to checkpoint and whether to offload their inputs, fastest that fits
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    dataloader_workers: int = 0
    # DPO (trainer.kind=dpo)
    beta: float = 0.1  # higher: stay closer to the reference policy (IPO: the regulariser tau)
    loss_type: str = "sigmoid"  # one of TRL's (finetune.training.dpo.loss_types): sigmoid (DPO), ipo, hinge, robust...
    precompute_ref: bool = False  # reference log-probs computed once before training, cached on disk, reused
    # ORPO (beta = the paper's lambda), SimPO (beta, simpo_gamma), KTO (beta, loss_type kto, the weights below)
    simpo_gamma: float = 0.5  # SimPO's target reward margin gamma (the loss is -log sigmoid(beta * margin - gamma))
    desirable_weight: float = 1.0  # KTO: weight of thumbs-up losses; raise it when they are the rarer kind
    undesirable_weight: float = 1.0  # KTO: weight of thumbs-down losses
    loraplus_lr_ratio: float | None = None  # LoRA+: lora_B (and DoRA magnitudes) learn this many times faster
    neftune_alpha: float | None = None  # NEFTune: uniform noise alpha/sqrt(length x hidden) on the embeddings


@dataclass
class EvalConfig:
    """Held-out metrics and sample generations during training (finetune/training/samples.py)."""

    every: int | None = None  # eval loss + perplexity (DPO: reward accuracy, margins) and samples every N
    #                              optimizer steps and at the end; null: every trainer.save_steps
    samples: int = 4  # fixed prompts generated into samples.jsonl (+ a wandb table) at each eval; 0: none
    max_new_tokens: int = 128  # per sample, greedy, so one step's samples compare with the next's
    prompts: str | None = None  # JSONL of {"prompt": str} or {"messages": [...]}; default: held-out dialogs
    benchmarks: list[str] = field(default_factory=list)  # lm_eval tasks scored on the model being trained (logged
    #                                                      as eval_benchmark/<task>/<metric>), e.g. [hellaswag_mini]
    benchmark_steps: int | None = None  # every N optimizer steps and at the end; null: at the end only
    benchmark_limit: int | None = None  # the first N items of each task; null: all (200 in the shipped ones)


@dataclass
class TrackingConfig:
    """Experiment tracking (finetune/training/tracking.py); choose it with `tracking=none|wandb|tensorboard`."""

    backend: str = "none"  # none | wandb | tensorboard (set by the `tracking=` choice)
    project: str = "llama2-finetune"  # wandb project
    entity: str | None = None  # wandb team or user; default: the API key's default entity
    group: str | None = None  # wandb run group
    tags: list[str] = field(default_factory=list)


@dataclass
class PlanConfig:
    """The memory/speed plan (finetune/planning/planner.py): `finetune/plan.py`, and the check before training loads
    weights."""

    strict: bool = True  # training stops when the plan does not fit the GPUs; false: a warning, and it goes on
    gpus: int | None = None  # GPUs (ranks) to plan for; null: the launched processes (none on a CPU: no check)
    gpu_memory: str | None = None  # per GPU, e.g. 24GB or 80GiB (both 2**30 B); null: the card's own
    gpu: str | None = None  # a name in finetune.planning.planner.GPUS (peak FLOP/s, memory); null: the card
    #                            present, else h100
    sharding: str | None = None  # ddp | fsdp | zero2 | zero3; null: what accelerate launch set up (else ddp)
    utilization: float = 0.295  # share of the GPU's bf16 peak reached (plain HF stack, H100: bench/plan_calibration.md)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    output_dir: str | None = None  # default: outputs/<recipe>-<data>-<time>
    overwrite: bool = False  # allow writing into an output_dir that holds a finished run
    resume: bool = True  # continue from output_dir's latest complete checkpoint; false: start over in a new dir
    init_adapter: str | None = None  # start from a trained adapter folder
    seed: int = 42
