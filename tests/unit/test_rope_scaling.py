"""`model.rope_scaling` reaches the model through transformers' own RoPE configuration: the rotary embedding of the
base we load equals transformers' LlamaRotaryEmbedding built from the documented config at every position of the
scaled context; a data.max_length past the scaled context is one error line before any weight loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.conftest import compose, run_entry
from finetune import config
from finetune.model import base as model_base
from finetune.model import rope
from finetune.model import tokenizer as tokenizer_mod

ORIGINAL, FACTOR = 256, 4.0  # the tiny model's pretrained context in these tests, and the scaling
# What a user's config.json says for each type (transformers 5's `rope_parameters`), written out by hand.
REFERENCE = {
    "linear": (1024, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
    "dynamic": (256, {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}),
    "yarn": (
        1024,
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "rope_theta": 10000.0},
    ),
}


@pytest.fixture(scope="module")
def tiny_256(tmp_path_factory):
    """The tiny random Llama 2 with a 256-token pretrained context, in its own folder (the shared one stays 4096)."""
    path = tmp_path_factory.mktemp("tiny256") / "llama2-tiny-256"
    cfg = config.load(
        compose(
            "recipe=tiny_lora",
            f"model.path={path}",
            f"model.arch.max_position_embeddings={ORIGINAL}",
            "data.max_length=256",
        )
    )
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    return cfg


def cos_sin(rotary, length: int):
    x = torch.zeros(1, length, 16)
    with torch.no_grad():
        return rotary(x, torch.arange(length)[None])


@pytest.mark.parametrize("kind", list(REFERENCE))
def test_rotary_embedding_equals_transformers_own_at_every_position(kind, tiny_256):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = tiny_256
    mcfg = dataclasses.replace(cfg.model, rope_scaling=config.schema.RopeScalingConfig(type=kind, factor=FACTOR))
    ours = model_base.load_base(mcfg, dataclasses.replace(cfg.quant, mode="none"))
    max_pos, params = REFERENCE[kind]
    a = mcfg.arch
    theirs = LlamaRotaryEmbedding(
        LlamaConfig(
            hidden_size=a.hidden_size,
            num_attention_heads=a.num_heads,
            max_position_embeddings=max_pos,
            rope_parameters=dict(params),
        )
    )
    plain = LlamaRotaryEmbedding(
        LlamaConfig(hidden_size=a.hidden_size, num_attention_heads=a.num_heads, max_position_embeddings=ORIGINAL)
    )
    length = int(ORIGINAL * FACTOR)  # every position of the scaled context
    got, want, unscaled = cos_sin(ours.model.rotary_emb, length), cos_sin(theirs, length), cos_sin(plain, length)
    assert ours.config.max_position_embeddings == max_pos
    for g, w, u in zip(got, want, unscaled):
        assert g.shape == (1, length, a.hidden_size // a.num_heads)
        assert torch.equal(g, w), f"{kind}: max |diff| {float((g - w).abs().max()):.2e}"
        assert not torch.allclose(g[0, ORIGINAL:], u[0, ORIGINAL:])  # scaling changed positions past the original


def test_config_fields_round_trip_through_transformers(tiny_256):
    """What merged/config.json carries loads back in stock transformers as the same scaling."""
    from transformers import LlamaConfig

    for kind in REFERENCE:
        r = config.schema.RopeScalingConfig(type=kind, factor=FACTOR, beta_fast=16.0 if kind == "yarn" else None)
        mcfg = dataclasses.replace(tiny_256.model, rope_scaling=r)
        fields = rope.config_fields(mcfg)
        loaded = LlamaConfig.from_dict(json.loads(json.dumps({"hidden_size": 64, "num_attention_heads": 4, **fields})))
        assert loaded.rope_parameters == fields["rope_parameters"], kind
        assert loaded.max_position_embeddings == REFERENCE[kind][0], kind
        assert rope.scaling_of(fields) == {
            "type": kind,
            "factor": FACTOR,
            "original_context": ORIGINAL,
            **({"beta_fast": 16.0} if kind == "yarn" else {}),
        }


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["model.rope_scaling.type=linear", "model.rope_scaling.factor=4", "data.max_length=20000"],
            "data.max_length=20000 is longer than the model's context (model.arch.max_position_embeddings=4096 x "
            "model.rope_scaling.factor=4 = 16384); set data.max_length<=16384 or model.rope_scaling.factor>=5",
        ),
        (
            ["data.max_length=8192"],
            "data.max_length=8192 is longer than the model's context (model.arch.max_position_embeddings=4096); set "
            "data.max_length<=4096, or extend the context: model.rope_scaling.type=linear model.rope_scaling.factor=2",
        ),
        (
            ["model.rope_scaling.type=yarn", "model.rope_scaling.factor=1"],
            "model.rope_scaling.factor=1: must be > 1 with model.rope_scaling.type=yarn",
        ),
        (["model.rope_scaling.factor=4"], "model.rope_scaling.* is set but model.rope_scaling.type is null"),
        (
            ["model.rope_scaling.type=linear", "model.rope_scaling.factor=2", "model.rope_scaling.beta_fast=8"],
            "model.rope_scaling.beta_fast/beta_slow/attention_factor are YaRN's",
        ),
        (["model.rope_scaling.type=ntk"], "model.rope_scaling.type=ntk: use one of linear, dynamic, yarn"),
    ],
)
def test_bad_scaling_is_one_line_naming_the_fix(overrides, line):
    problems = config.check(compose("recipe=tiny_qlora", *overrides))
    assert len(problems) == 1 and problems[0].startswith(line), problems


def test_scaled_context_admits_the_longer_max_length():
    assert (
        config.check(
            compose(
                "recipe=tiny_qlora",
                "model.rope_scaling.type=yarn",
                "model.rope_scaling.factor=4",
                "data.max_length=16384",
            )
        )
        == []
    )


@pytest.mark.slow
def test_too_long_for_the_scaled_context_stops_train_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    proc = run_entry(
        "train.py",
        "recipe=tiny_qlora",
        f"output_dir={out}",
        "model.rope_scaling.type=linear",
        "model.rope_scaling.factor=2",
        "data.max_length=9000",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-2:] == [
        "error: invalid config:",
        "  - data.max_length=9000 is longer than the model's context (model.arch.max_position_embeddings=4096 x "
        "model.rope_scaling.factor=2 = 8192); set data.max_length<=8192 or model.rope_scaling.factor>=3",
    ]
    assert not out.exists()
