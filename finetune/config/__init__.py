"""The bottom of the house: the typed schema, Hydra registration, paths, sizes and the user-error base.

Owns: what every key means (schema), which spellings a choice allows, the checks the config alone shows,
where the repository's configs and the cache are. Must never import another finetune package: every stage
imports this one, and it reaches no data, model or weights.
"""

from finetune.config.choices import CHOICES, Dtype, QuantMode
from finetune.config.errors import ConfigError, UserError
from finetune.config.load import (
    check,
    choice_problem,
    choice_problems,
    flatten,
    load,
    redact,
    schema_object,
    to_yaml,
    unknown_keys,
    variants_line,
)
from finetune.config.paths import CONFIGS_DIR, RECIPES_DIR, ROOT, cache_root, looks_local, parse_size
from finetune.config.schema import (
    LLAMA_LINEARS,
    ArchConfig,
    DataConfig,
    EvalConfig,
    FieldsConfig,
    LoraConfig,
    ModelConfig,
    PlanConfig,
    QuantConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
)
from finetune.config.store import recipe_names, register

DTYPES = tuple(Dtype.values())
QUANT_MODES = tuple(QuantMode.values())

__all__ = [
    "ConfigError",
    "UserError",
    "check",
    "flatten",
    "unknown_keys",
    "choice_problem",
    "choice_problems",
    "load",
    "redact",
    "schema_object",
    "to_yaml",
    "variants_line",
    "CONFIGS_DIR",
    "RECIPES_DIR",
    "ROOT",
    "cache_root",
    "looks_local",
    "parse_size",
    "CHOICES",
    "LLAMA_LINEARS",
    "ArchConfig",
    "DataConfig",
    "EvalConfig",
    "FieldsConfig",
    "LoraConfig",
    "ModelConfig",
    "PlanConfig",
    "QuantConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrainerConfig",
    "recipe_names",
    "register",
    "DTYPES",
    "QUANT_MODES",
]
