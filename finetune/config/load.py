"""The composed config as a schema object, after the checks that need only the config itself.

Checks that need another stage's knowledge (the data files, the model folder, TRL's losses, the run
directory) live in that stage and run from the entry point (`training.checks.before_weights`), before any
file is written or weight loaded.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune.config.errors import ConfigError
from finetune.config.schema import CHOICES, LLAMA_LINEARS, TrainConfig


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
    if missing:
        return [f"{k}: required, no value given (set {k}=...)" for k in missing]
    problems = choice_problems(cfg)
    t, e, pl = cfg.trainer, cfg.eval, cfg.plan
    if cfg.lora.r <= 0:
        problems.append(f"lora.r={cfg.lora.r}: must be a positive integer (8, 16, 64 ...)")
    unknown = sorted(set(cfg.lora.target_modules) - set(LLAMA_LINEARS))
    if unknown:
        problems.append(f"lora.target_modules: {unknown} are not Llama linear layers; use some of {LLAMA_LINEARS}")
    if t.micro_batch_size < 1 or t.grad_accum < 1:
        problems.append("trainer.micro_batch_size and trainer.grad_accum must be >= 1")
    if t.max_steps <= 0 and t.num_epochs <= 0:
        problems.append("set trainer.max_steps > 0 or trainer.num_epochs > 0")
    if e.every is not None and e.every < 1:
        problems.append(f"eval.every={e.every}: must be >= 1 (optimizer steps between evaluations), "
                        "or null to follow trainer.save_steps")
    if e.samples < 0 or e.max_new_tokens < 1:
        problems.append("eval.samples must be >= 0 (0: no samples) and eval.max_new_tokens >= 1")
    if (pl.gpus is not None and pl.gpus < 1) or not 0 < pl.utilization <= 1:
        problems.append("plan.gpus must be >= 1 and plan.utilization in (0, 1]")
    if cfg.data.max_length > cfg.model.arch.max_position_embeddings:
        problems.append(f"data.max_length={cfg.data.max_length} is longer than the model's context "
                        f"(model.arch.max_position_embeddings={cfg.model.arch.max_position_embeddings}); "
                        f"set data.max_length<={cfg.model.arch.max_position_embeddings}")
    return problems


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
