"""The typed config schema, recipe registration, and the checks that run before any weight loads.

Every entry point is a Hydra app over `configs/`; `register()` adds the schema (so a misspelled key or a
wrong type fails with the key's name) and every `recipes/*.yaml` as an option of the group `recipe`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = ROOT / "recipes"
CONFIGS_DIR = ROOT / "configs"

DTYPES = ("float32", "bfloat16", "float16")
QUANT_MODES = ("none", "nf4", "fp4", "int8")
TRACKERS = ("none", "wandb", "tensorboard")
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """Every problem found in a config, raised once, before any weight loads."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


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
class ModelConfig:
    name: str = MISSING
    path: str = MISSING  # hub id (meta-llama/Llama-2-13b-hf) or a local folder
    revision: Optional[str] = None
    tokenizer: Optional[str] = None  # folder or hub id holding tokenizer.model; default: `path`
    chat: bool = False  # a -chat checkpoint (trained on Meta's [INST] format)
    dtype: str = "bfloat16"  # weights and compute on a GPU; on a CPU training runs in float32
    attn_implementation: str = "sdpa"
    random_init: bool = False  # real architecture, random weights, no download (dry runs, benchmarks)
    seed: int = 0  # seed of the random weights
    arch: ArchConfig = field(default_factory=ArchConfig)


@dataclass
class QuantConfig:
    mode: str = "none"  # none | nf4 (QLoRA) | fp4 | int8
    double_quant: bool = True  # quantize the 4-bit scales too: ~0.37 bit/param saved
    storage_dtype: Optional[str] = None  # 4-bit storage dtype; FSDP needs it equal to the compute dtype
    upcast_fp32: bool = True  # peft casts embeddings, norms, lm_head to float32 (steadier in fp16); false
    #                           keeps model.dtype: ~0.5 GB less (7B), a bf16 residual stream, faster


@dataclass
class LoraConfig:
    r: int = 16  # higher: more capacity, more memory
    alpha: int = 32  # scale = alpha / r
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))
    bias: str = "none"


@dataclass
class FieldsConfig:
    """Where your records keep what an adapter reads (`data.fields.prompt=question`); dots reach into nested
    records (`ticket.question`, `answers.0.text`). Unset: the field of that name. `data=jsonl` (adapter `fields`)
    reads prompt (+ input, system) and response, or prompt, chosen and rejected."""

    prompt: Optional[str] = None
    input: Optional[str] = None
    response: Optional[str] = None
    system: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    text: Optional[str] = None  # adapter text (continued pretraining)
    instruction: Optional[str] = None  # alpaca, self_instruct
    output: Optional[str] = None  # alpaca
    instances: Optional[str] = None  # self_instruct
    messages: Optional[str] = None  # messages
    conversations: Optional[str] = None  # sharegpt


@dataclass
class DataConfig:
    name: str = MISSING
    adapter: str = MISSING  # a name in finetune.data.ADAPTERS
    path: str = MISSING  # file, folder or hub dataset id
    split: str = "train"
    revision: Optional[str] = None
    eval_fraction: float = 0.0
    eval_path: Optional[str] = None
    max_samples: Optional[int] = None
    seed: int = 0  # shuffle seed (deterministic)
    max_length: int = 1024
    too_long: str = "drop"  # drop | truncate (keep whole turns that fit; cut the answer only if one turn is too long; counted)
    max_prompt_length: Optional[int] = None  # DPO: pairs whose prompt is longer are dropped (counted)
    system_prompt: Optional[str] = None
    train_on: str = "all"  # all assistant turns, or `last` only
    fields: FieldsConfig = field(default_factory=FieldsConfig)  # our field name -> yours: data.fields.prompt=question
    invalid: str = "error"  # error | skip: records that break the format (roles out of order...) stop or are counted
    cache: bool = True  # reuse tokenized data from $FINETUNE_CACHE/data when nothing that changes the tokens changed


@dataclass
class TrainerConfig:
    kind: str = "sft"  # sft | dpo
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
    gradient_checkpointing: Optional[bool] = None  # None: on with CUDA, off on CPU
    packing: bool = False
    liger: bool = False  # Liger Triton kernels (RMSNorm, RoPE, SwiGLU): faster, less activation memory;
    #                      CUDA only (ignored on a CPU); needs `pip install liger-kernel`
    activation_offloading: bool = False  # saved activations wait in pinned CPU memory (TRL): less GPU
    #                                      memory for PCIe traffic; pays off without checkpointing
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    dataloader_workers: int = 0
    # DPO (trainer.kind=dpo)
    beta: float = 0.1  # higher: stay closer to the reference policy (IPO: the regulariser tau)
    loss_type: str = "sigmoid"  # a name in finetune.dpo.LOSS_TYPES (TRL's): sigmoid (DPO), ipo, hinge, robust...
    precompute_ref: bool = False  # reference log-probs computed once before training, cached on disk, reused


@dataclass
class EvalConfig:
    """Held-out metrics and sample generations during training (finetune/samples.py)."""

    every: Optional[int] = None  # eval loss + perplexity (DPO: reward accuracy, margins) and samples every N
    #                              optimizer steps and at the end; null: every trainer.save_steps
    samples: int = 4  # fixed prompts generated into samples.jsonl (+ a wandb table) at each eval; 0: none
    max_new_tokens: int = 128  # per sample, greedy, so one step's samples compare with the next's
    prompts: Optional[str] = None  # JSONL of {"prompt": str} or {"messages": [...]}; default: held-out dialogs


@dataclass
class TrackingConfig:
    """Experiment tracking (finetune/tracking.py); choose it with `tracking=none|wandb|tensorboard`."""

    backend: str = "none"  # none | wandb | tensorboard (set by the `tracking=` choice)
    project: str = "llama2-finetune"  # wandb project
    entity: Optional[str] = None  # wandb team or user; default: the API key's default entity
    group: Optional[str] = None  # wandb run group
    tags: list[str] = field(default_factory=list)


@dataclass
class PlanConfig:
    """The memory/speed plan (finetune/planner.py): `finetune/plan.py`, and the check before training loads weights."""

    strict: bool = True  # training stops when the plan does not fit the GPUs; false: a warning, and it goes on
    gpus: Optional[int] = None  # GPUs (ranks) to plan for; null: the launched processes (none on a CPU: no check)
    gpu_memory: Optional[str] = None  # per GPU, e.g. 24GB or 80GiB (both 2**30 B); null: the card's own
    gpu: Optional[str] = None  # a name in finetune.planner.GPUS (peak FLOP/s, memory); null: the card present, else h100
    sharding: Optional[str] = None  # ddp | fsdp | zero2 | zero3; null: what accelerate launch set up (else ddp)
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
    output_dir: Optional[str] = None  # default: outputs/<recipe>-<data>-<time>
    overwrite: bool = False  # allow writing into an output_dir that holds a finished run
    resume: bool = True  # continue from output_dir's latest complete checkpoint; false: start over in a new dir
    init_adapter: Optional[str] = None  # start from a trained adapter folder
    seed: int = 42


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def register() -> None:
    """Add the schema and every recipes/*.yaml (as group `recipe`, package _global_) to Hydra's store."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name in recipe_names():
        node = OmegaConf.load(RECIPES_DIR / f"{name}.yaml")
        cs.store(group="recipe", name=name, node=node, package="_global_")


def load(dict_cfg: DictConfig) -> TrainConfig:
    """The composed config as a schema object, after every check that needs no weights."""
    problems = check(dict_cfg)
    if problems:
        raise ConfigError(problems)
    return OmegaConf.to_object(dict_cfg)  # type: ignore[return-value]


def check(cfg: DictConfig) -> list[str]:
    """Every problem in a composed config, each naming the key and the fix."""
    problems: list[str] = []
    missing = sorted(OmegaConf.missing_keys(cfg))
    problems += [f"{k}: required, no value given (set {k}=...)" for k in missing]
    if problems:
        return problems
    m, q, t = cfg.model, cfg.quant, cfg.trainer
    if m.dtype not in DTYPES:
        problems.append(f"model.dtype={m.dtype}: use one of {', '.join(DTYPES)}")
    if q.mode not in QUANT_MODES:
        problems.append(f"quant.mode={q.mode}: use one of {', '.join(QUANT_MODES)}")
    if q.mode != "none" and (err := bitsandbytes_problem()):
        problems.append(f"quant.mode={q.mode} needs bitsandbytes: {err}; install it with "
                        "`pip install 'bitsandbytes>=0.50.2'` or set quant.mode=none for 16-bit LoRA")
    if looks_local(m.path) and not m.random_init and not Path(m.path).is_dir():
        problems.append(f"model.path={m.path}: no such folder; give a local Llama 2 checkpoint folder "
                        "or a hub id like meta-llama/Llama-2-7b-hf")
    if m.tokenizer and looks_local(m.tokenizer) and not (Path(m.tokenizer) / "tokenizer.model").is_file():
        problems.append(f"model.tokenizer={m.tokenizer}: no tokenizer.model in that folder")
    if cfg.lora.r <= 0:
        problems.append(f"lora.r={cfg.lora.r}: must be a positive integer (8, 16, 64 ...)")
    unknown = sorted(set(cfg.lora.target_modules) - set(LLAMA_LINEARS))
    if unknown:
        problems.append(f"lora.target_modules: {unknown} are not Llama linear layers; use some of {LLAMA_LINEARS}")
    if cfg.tracking.backend not in TRACKERS:
        problems.append(f"tracking.backend={cfg.tracking.backend}: use tracking=none, tracking=wandb or "
                        "tracking=tensorboard")
    if t.kind not in ("sft", "dpo"):
        problems.append(f"trainer.kind={t.kind}: use sft or dpo")
    if t.kind == "dpo":
        from finetune import dpo

        problems += dpo.check(cfg)
    if t.micro_batch_size < 1 or t.grad_accum < 1:
        problems.append("trainer.micro_batch_size and trainer.grad_accum must be >= 1")
    if t.max_steps <= 0 and t.num_epochs <= 0:
        problems.append("set trainer.max_steps > 0 or trainer.num_epochs > 0")
    if cfg.init_adapter and not (Path(cfg.init_adapter) / "adapter_config.json").is_file():
        problems.append(f"init_adapter={cfg.init_adapter}: no adapter_config.json there; "
                        "point it at a run's adapter/ folder")
    if cfg.output_dir and finished(Path(cfg.output_dir)) and not cfg.overwrite and cfg.resume:
        problems.append(f"output_dir={cfg.output_dir} already holds a finished run (adapter/ exists); "
                        "choose a new output_dir=, pass resume=false (starts over in a new directory beside it) "
                        "or overwrite=true (replaces it)")
    e = cfg.eval
    if e.every is not None and e.every < 1:
        problems.append(f"eval.every={e.every}: must be >= 1 (optimizer steps between evaluations), "
                        "or null to follow trainer.save_steps")
    if e.samples < 0 or e.max_new_tokens < 1:
        problems.append("eval.samples must be >= 0 (0: no samples) and eval.max_new_tokens >= 1")
    if e.prompts and not Path(e.prompts).is_file():
        problems.append(f"eval.prompts={e.prompts}: no such file; give a JSONL of prompts or leave it unset")
    elif e.prompts:
        from finetune import samples

        problems += samples.check(e)
    if t.activation_offloading and not cuda_available():
        problems.append("trainer.activation_offloading=true moves activations from the GPU to CPU memory; "
                        "without a GPU set trainer.activation_offloading=false")
    if t.liger and (err := liger_problem()):
        problems.append(f"trainer.liger=true needs liger-kernel: {err}; install it with `pip install liger-kernel` "
                        "or set trainer.liger=false")
    pl = cfg.plan
    if pl.sharding is not None and pl.sharding not in ("ddp", "fsdp", "zero2", "zero3"):
        problems.append(f"plan.sharding={pl.sharding}: use ddp, fsdp, zero2 or zero3")
    if (pl.gpus is not None and pl.gpus < 1) or not 0 < pl.utilization <= 1:
        problems.append("plan.gpus must be >= 1 and plan.utilization in (0, 1]")
    from finetune import data  # data checks need no weights either

    problems += data.check(cfg.data)
    return problems


def looks_local(path: str) -> bool:
    """A hub id is `org/name`; anything else (absolute, ./, ~, more slashes, or existing) is a local path."""
    return path.startswith(("/", ".", "~")) or path.count("/") != 1 or Path(path).exists()


def finished(run_dir: Path) -> bool:
    return (run_dir / "adapter" / "adapter_config.json").is_file()


def bitsandbytes_problem() -> Optional[str]:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken binary raising at import
        return f"import failed ({type(exc).__name__}: {exc})"
    return None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def liger_problem() -> Optional[str]:
    """Why Liger's kernels cannot run here, or None; on a CPU they are not used, so nothing is missing."""
    if not cuda_available():
        return None
    try:
        import liger_kernel  # noqa: F401
    except Exception as exc:
        return f"import failed ({type(exc).__name__}: {exc})"
    return None


def to_yaml(dict_cfg: DictConfig) -> str:
    """The fully resolved config, secrets redacted (keys that name a token, key or password)."""
    container: Any = OmegaConf.to_container(dict_cfg, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(redact(container)))


def redact(node: Any) -> Any:
    if isinstance(node, dict):
        # whole words only: `hf_token` is a secret, `model.tokenizer` (a path export needs) is not
        return {k: "***" if set(str(k).lower().split("_")) & {"token", "key", "password", "secret"}
                and node[k] else redact(v) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    return node


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
