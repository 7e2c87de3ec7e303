"""One record per training method (finetune/config/methods.py) and every table reading it: a method added to the
records but forgotten in a place (no trainer module, no trainer config, a table that lists the kinds by hand)
fails here."""

from __future__ import annotations

import ast

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose
from finetune.config.choices import CHOICES
from finetune.config.methods import METHODS, WIRED, Method
from finetune.data.build import ENCODER_MODULES, ENCODERS
from finetune.planning import planner
from finetune.training import checks
from finetune.training.kinds import TRAINERS


def data_for(m: Method) -> list[str]:
    return ["data=oasst"] if m.conversations else ["data=orca_dpo", "data.max_prompt_length=192"]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_a_complete_record(name):
    m = METHODS[name]
    assert m.name == name and m.title and m.trl_trainer and m.data
    assert m.encoder in ENCODER_MODULES, f"{name}: encoder {m.encoder!r} is none of {sorted(ENCODER_MODULES)}"
    module = ROOT / "finetune" / "training" / f"{m.trainer}.py"
    assert module.is_file(), f"{name}: no trainer module {module.relative_to(ROOT)}"
    assert callable(TRAINERS[name].check) and callable(TRAINERS[name].build)
    assert m.sequences in (1, 2) and m.no_grad_passes >= (1 if m.reference else 0)
    assert m.packing in ("", "trl", "padding_free") and set(m.wired) <= set(WIRED) - {"packing"}
    assert not m.precomputable or m.reference  # only a reference pass can be computed ahead


@pytest.mark.parametrize("name", list(METHODS))
def test_every_table_covers_every_method(name):
    m = METHODS[name]
    assert name in CHOICES["trainer.kind"].values()
    assert ENCODERS[name] is ENCODER_MODULES[m.encoder]
    assert TRAINERS[name].__name__ == f"finetune.training.{m.trainer}"
    part = ROOT / "configs" / "trainer" / f"{name}.yaml"
    assert part.is_file() and OmegaConf.load(part).kind == name, f"{name}: configs/trainer/{name}.yaml"
    dict_cfg = compose("recipe=tiny_qlora", f"trainer={name}", *data_for(m), "trainer.micro_batch_size=2")
    assert dict_cfg.trainer.kind == name and checks.problems(dict_cfg) == []
    setup = planner.Setup(hidden=64, ffn=192, layers=2, heads=4, kv_heads=4, micro_batch=2, max_length=256)
    est = planner.memory(setup.but(kind=name))
    assert ("reference adapter (frozen copy of the starting LoRA)" in est.parts) == m.reference


def hand_written_kind_tables() -> list[str]:
    """Comparisons with, and collections of, method names outside the records: each is a table of kinds that a
    new method would have to find (`kind in ("dpo", "kto")`, `{"sft": ..., "dpo": ...}`)."""
    found = []
    for path in sorted((ROOT / "finetune").rglob("*.py")):
        if path.name == "methods.py" and path.parent.name == "config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                values = [c for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))]
                names = [e.value for v in values for e in v.elts if isinstance(e, ast.Constant)]
                names += [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(n in METHODS for n in names) and "loss_type" not in ast.unparse(node):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                if sum(isinstance(e, ast.Constant) and e.value in METHODS for e in node.elts) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                if sum(k in METHODS for k in keys) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_table_lists_the_methods_by_hand():
    assert hand_written_kind_tables() == []


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if not m.conversations])
def test_max_prompt_length_is_checked_once_for_every_preference_method(name):
    found = checks.problems(
        compose(
            "recipe=tiny_qlora",
            f"trainer={name}",
            "data=orca_dpo",
            "data.max_length=512",
            "data.max_prompt_length=600",
            "trainer.micro_batch_size=2",
        )
    )
    assert [p for p in found if "leaves no room" in p] == [
        "data.max_prompt_length=600 leaves no room for an answer in data.max_length=512; lower it or raise "
        "data.max_length"
    ], found


def test_a_key_the_methods_trainer_never_reads_is_refused():
    """DPO's trainer is built without Liger and without activation offloading (they are wired into SFT only), so
    asking for them names the key instead of training without them silently."""
    found = checks.problems(compose("recipe=tiny_dpo", "trainer.liger=true", "trainer.activation_offloading=true"))
    assert (
        "trainer.liger=true with trainer.kind=dpo: the Liger kernels are wired into SFT only; DPO would run "
        "without them; set trainer.liger=false" in found
    ), found
    assert any(p.startswith("trainer.activation_offloading=true with trainer.kind=dpo") for p in found), found
    assert not any(
        p.startswith("trainer.packing") for p in checks.problems(compose("recipe=tiny_dpo", "trainer.packing=true"))
    )
