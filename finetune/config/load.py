"""The composed config as a schema object, after the checks that need only the config itself.

Checks that need another stage's knowledge (the data files, the model folder, TRL's losses, the run
directory) live in that stage and run from the entry point (`training.checks.before_weights`), before any
file is written or weight loaded.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune.config import rope
from finetune.config.choices import CHOICES
from finetune.config.errors import ConfigError
from finetune.config.schema import LLAMA_LINEARS, TrainConfig


def load(dict_cfg: DictConfig, extra: list[str] | None = None) -> TrainConfig:
    """The schema object for `dict_cfg`; one ConfigError listing every problem (with `extra` ones) otherwise."""
    problems = check(dict_cfg) + list(extra or [])
    if problems:
        raise ConfigError(problems)
    return OmegaConf.to_object(dict_cfg)  # type: ignore[return-value]


def allowed(values: list[str]) -> str:
    return " or ".join(values) if len(values) == 2 else "one of " + ", ".join(values)


def choice_problem(key: str, value) -> list[str]:
    """[the problem] when `value` is not one of the spellings `CHOICES[key]` allows, else []."""
    values = CHOICES[key].values()
    return [] if value is None or value in values else [f"{key}={value}: use {allowed(values)}"]


def choice_problems(cfg: DictConfig) -> list[str]:
    """Every key of `CHOICES` holding a value outside its set."""
    return [p for key in CHOICES for p in choice_problem(key, OmegaConf.select(cfg, key, default=None))]


def check(cfg: DictConfig) -> list[str]:
    """Every problem in a composed config that the config alone shows, each naming the key and the fix."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    problems = [f"{k}: required, no value given (set {k}=...)" for k in missing]
    problems += unknown_keys(cfg) + choice_problems(cfg) + trainer_problems(cfg.trainer) + lora_problems(cfg.lora)
    if not any(k.startswith("model.arch") for k in missing):
        problems += arch_problems(cfg.model.arch) + rope.problems(cfg.model, cfg.data.max_length)
    evaluation, plan = cfg.eval, cfg.plan
    if evaluation.every is not None and evaluation.every < 1:
        problems.append(
            f"eval.every={evaluation.every}: must be >= 1 (optimizer steps between evaluations), "
            "or null to follow trainer.save_steps"
        )
    if evaluation.samples < 0 or evaluation.max_new_tokens < 1:
        problems.append("eval.samples must be >= 0 (0: no samples) and eval.max_new_tokens >= 1")
    if plan.gpus is not None and plan.gpus < 1:
        problems.append(f"plan.gpus={plan.gpus}: must be >= 1 (or null: the GPUs present)")
    if not 0 < plan.utilization <= 1:
        problems.append(f"plan.utilization={plan.utilization}: must be in (0, 1]")
    return problems


def trainer_problems(trainer) -> list[str]:
    problems = []
    if not trainer.learning_rate > 0:
        problems.append(f"trainer.learning_rate={trainer.learning_rate}: must be > 0 (2e-4 is the QLoRA paper's)")
    if not 0 <= trainer.warmup_ratio < 1:
        problems.append(
            f"trainer.warmup_ratio={trainer.warmup_ratio}: a fraction of the steps, in [0, 1) (0.03 is usual)"
        )
    if trainer.weight_decay < 0 or trainer.max_grad_norm < 0:
        problems.append("trainer.weight_decay and trainer.max_grad_norm must be >= 0 (0: off)")
    if trainer.micro_batch_size < 1 or trainer.grad_accum < 1:
        problems.append("trainer.micro_batch_size and trainer.grad_accum must be >= 1")
    if trainer.max_steps <= 0 and trainer.num_epochs <= 0:
        problems.append("set trainer.max_steps > 0 or trainer.num_epochs > 0")
    for key in ("save_steps", "logging_steps"):
        if getattr(trainer, key) < 1:
            problems.append(f"trainer.{key}={getattr(trainer, key)}: must be >= 1 (optimizer steps)")
    return problems


def lora_problems(lora) -> list[str]:
    problems = []
    if lora.r <= 0:
        problems.append(f"lora.r={lora.r}: must be a positive integer (8, 16, 64 ...)")
    if lora.alpha <= 0:
        problems.append(f"lora.alpha={lora.alpha}: must be > 0 (the LoRA update is scaled by alpha / r)")
    if not 0 <= lora.dropout < 1:
        problems.append(f"lora.dropout={lora.dropout}: a probability in [0, 1) (0.05 or 0.1 is usual)")
    unknown = sorted(set(lora.target_modules) - set(LLAMA_LINEARS))
    if unknown:
        problems.append(f"lora.target_modules: {unknown} are not Llama linear layers; use some of {LLAMA_LINEARS}")
    elif not lora.target_modules:
        problems.append(f"lora.target_modules is empty: LoRA would train nothing; use some of {LLAMA_LINEARS}")
    return problems


def arch_problems(arch) -> list[str]:
    problems = []
    if arch.hidden_size < 1 or arch.num_heads < 1 or arch.hidden_size % arch.num_heads:
        problems.append(
            f"model.arch.hidden_size={arch.hidden_size} is not a multiple of model.arch.num_heads="
            f"{arch.num_heads}; each head gets hidden_size / num_heads dimensions"
        )
    elif arch.num_kv_heads < 1 or arch.num_heads % arch.num_kv_heads:
        problems.append(
            f"model.arch.num_heads={arch.num_heads} is not a multiple of model.arch.num_kv_heads="
            f"{arch.num_kv_heads} (grouped-query attention shares each KV head among whole groups)"
        )
    return problems


def schema_object(dict_cfg: DictConfig, check=None):
    """An entry point's composed config as its schema's object, or one ConfigError: keys the schema lacks first
    (`+key=...` gets past Hydra's own check), then whatever `check(obj)` returns as problems."""
    if unknown := unknown_keys(dict_cfg):
        raise ConfigError(unknown)
    obj = OmegaConf.to_object(dict_cfg)
    if check is not None and (problems := check(obj)):
        raise ConfigError(problems)
    return obj


def unknown_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys the schema does not have: `+key=value` and `++key=value` add them past Hydra's own check, and
    nothing would read them (a typo then trains with the default, silently)."""
    import dataclasses
    import difflib

    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return []
    names = [f.name for f in dataclasses.fields(schema)]
    out = []
    for key in cfg.keys():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            out.append(
                f"{prefix}{key}: no such key"
                + (f"; did you mean {prefix}{near[0]}?" if near else "")
                + " (a +/++ override adds keys that nothing reads); remove it or fix the spelling"
            )
        elif (
            not OmegaConf.is_missing(cfg, key)
            and not OmegaConf.is_interpolation(cfg, key)
            and isinstance(node := cfg[key], DictConfig)
        ):  # a sub-config, neither ??? nor None
            out += unknown_keys(node, f"{prefix}{key}.")
    return out


INITS = {"gaussian": "Gaussian init", "pissa": "PiSSA init", "olora": "OLoRA init", "loftq": "LoftQ init"}


def variants_line(cfg) -> str | None:
    """One line naming every LoRA variant a config turns on (DoRA, rsLoRA, PiSSA/OLoRA/LoftQ init, LoRA+, NEFTune)
    with the key that does it; None for plain LoRA."""
    lo, t = cfg.lora, cfg.trainer
    on = [
        ("DoRA", "lora.use_dora=true") if lo.use_dora else None,
        ("rsLoRA", "lora.use_rslora=true") if lo.use_rslora else None,
        (INITS[lo.init], f"lora.init={lo.init}") if lo.init in INITS else None,
        ("LoRA+", f"trainer.loraplus_lr_ratio={t.loraplus_lr_ratio}") if t.loraplus_lr_ratio else None,
        ("NEFTune", f"trainer.neftune_alpha={t.neftune_alpha}") if t.neftune_alpha else None,
    ]
    named = [f"{name} ({key})" for name, key in filter(None, on)]
    return f"LoRA variants on: {', '.join(named)}" if named else None


def to_yaml(dict_cfg: DictConfig) -> str:
    """The fully resolved config, secrets redacted (keys that name a token, key or password)."""
    container: Any = OmegaConf.to_container(dict_cfg, resolve=True)
    return OmegaConf.to_yaml(OmegaConf.create(redact(container)))


def flatten(node: dict, prefix: str = ""):
    """(dotted key, value) pairs of a nested dict: {"lora": {"r": 16}} -> ("lora.r", 16)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def redact(node: Any) -> Any:
    if isinstance(node, dict):
        # whole words only: `hf_token` is a secret, `model.tokenizer` (a path export needs) is not
        return {
            k: "***"
            if set(str(k).lower().split("_")) & {"token", "key", "password", "secret"} and node[k]
            else redact(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [redact(v) for v in node]
    return node
