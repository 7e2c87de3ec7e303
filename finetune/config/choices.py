"""Keys whose value is one of a fixed set of spellings, and those sets (checked by `config.load`)."""

from __future__ import annotations

from enum import Enum

from finetune.config.methods import METHODS


class Choice(str, Enum):
    """A key with a fixed set of spellings (the `CHOICES` below). The schema keeps such keys typed `str` and
    `config.load` checks every one against its enum in one pass: OmegaConf would stop at the first bad value,
    and a user fixing a config wants every problem listed at once."""

    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Dtype(Choice):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class QuantMode(Choice):
    none = "none"
    nf4 = "nf4"  # QLoRA
    fp4 = "fp4"
    int8 = "int8"


Kind = Choice("Kind", {name: name for name in METHODS}, module=__name__)  # one per training method's record


class LoraInit(Choice):
    default = "default"  # peft's: A Kaiming-uniform, B = 0
    gaussian = "gaussian"  # A ~ N(0, 1/r), B = 0
    pissa = "pissa"  # A, B = the principal singular vectors of W; the base keeps the residual
    olora = "olora"  # A, B = QR of W; the base keeps the residual
    loftq = "loftq"  # B A = the low-rank part of W - NF4(W): the 4-bit base + LoRA start closer to W


class RopeType(Choice):
    linear = "linear"  # position interpolation: every position divided by factor
    dynamic = "dynamic"  # NTK-aware: the base grows with the sequence past the original context
    yarn = "yarn"  # NTK-by-parts + attention temperature


class TooLong(Choice):
    drop = "drop"
    truncate = "truncate"


class TrainOn(Choice):
    all = "all"
    last = "last"


class OnInvalid(Choice):
    error = "error"
    skip = "skip"


class Tracker(Choice):
    none = "none"
    wandb = "wandb"
    tensorboard = "tensorboard"


class Sharding(Choice):
    ddp = "ddp"
    fsdp = "fsdp"
    zero2 = "zero2"
    zero3 = "zero3"


# Every key whose value is one of a fixed set, and that set; checked by `config.load`, read by the stages.
CHOICES: dict[str, type[Choice]] = {
    "model.dtype": Dtype,
    "quant.mode": QuantMode,
    "quant.storage_dtype": Dtype,
    "trainer.kind": Kind,
    "lora.init": LoraInit,
    "model.rope_scaling.type": RopeType,
    "data.too_long": TooLong,
    "data.train_on": TrainOn,
    "data.invalid": OnInvalid,
    "tracking.backend": Tracker,
    "plan.sharding": Sharding,
}
