"""Every shipped recipe composes and validates; the headline recipe says what it is; bad input names the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose, run_entry
from finetune import config

SKELETON_RECIPES = {"lora_7b", "qlora_7b", "lora_13b", "qlora_13b", "qlora_70b", "tiny_lora", "tiny_qlora"}


def test_every_recipe_composes_and_validates():
    names = config.recipe_names()
    assert SKELETON_RECIPES <= set(names)
    loaded = []
    for name in names:
        cfg = config.load(compose(f"recipe={name}"))
        assert cfg.model.arch.vocab_size == 32000, name
        loaded.append(name)
    assert len(loaded) == len(list((ROOT / "recipes").glob("*.yaml")))  # a recipe that stops loading fails here


def test_every_recipe_starts_with_its_launch_command_and_hardware():
    for path in (ROOT / "recipes").glob("*.yaml"):
        head = path.read_text().splitlines()[:4]
        assert head[0].startswith("# accelerate launch") and f"recipe={path.stem}" in head[0], path.name
        assert any("GB" in line or "CPU" in line for line in head), f"{path.name}: say the hardware and memory"


def test_default_recipe_is_tiny_qlora():
    cfg = compose()
    assert cfg.model.name == "llama2_tiny" and cfg.quant.mode == "nf4"


def test_qlora_13b_is_13b_nf4_double_quant_all_linear_layers():
    cfg = config.load(compose("recipe=qlora_13b"))
    assert cfg.model.path == "meta-llama/Llama-2-13b-hf"
    assert (cfg.quant.mode, cfg.quant.double_quant) == ("nf4", True)
    assert set(cfg.lora.target_modules) == set(config.LLAMA_LINEARS)
    assert cfg.trainer.kind == "sft"


def test_command_line_overrides_win_over_the_recipe(tmp_path):
    cfg = config.load(compose("recipe=qlora_13b", "lora.r=32", f"model.path={tmp_path}", "model=llama2_7b"))
    assert cfg.lora.r == 32 and cfg.model.path == str(tmp_path)
    assert cfg.model.name == "llama2_7b" and cfg.model.arch.hidden_size == 4096


def test_cfg_job_prints_the_composed_config_and_loads_nothing():
    proc = run_entry("train.py", "recipe=qlora_13b", "--cfg", "job")
    printed = OmegaConf.create(proc.stdout)
    assert printed.model.path == "meta-llama/Llama-2-13b-hf"
    assert printed.quant.mode == "nf4" and printed.quant.double_quant is True


def test_unknown_recipe_lists_the_recipes():
    proc = run_entry("train.py", "recipe=nope", check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()  # one line in our words, never Hydra's "Could not find" block
    assert line.startswith("error: recipe=nope: no such recipe; available: ")
    listed = line.split("available: ")[1].split(", ")
    assert set(SKELETON_RECIPES) <= set(listed), listed


def test_unknown_model_lists_the_models():
    proc = run_entry("train.py", "model=llama3_8b", check=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: model=llama3_8b: no such model;")
    assert "llama2_13b_chat" in line.split("available: ")[1]


def test_misspelled_key_is_named():
    proc = run_entry("train.py", "trainer.learnin_rate=1e-4", check=False)
    assert proc.returncode == 2
    assert proc.stderr == "error: trainer.learnin_rate: no such key; did you mean trainer.learning_rate?\n"


def test_wrong_type_is_named():
    proc = run_entry("train.py", "lora.r=big", check=False)
    assert proc.returncode != 0 and "lora.r" in proc.stderr


def test_missing_local_model_path_says_so(tmp_path):
    proc = run_entry("train.py", f"model.path={tmp_path}/nowhere", "model.random_init=false", check=False)
    assert proc.returncode == 2
    assert f"model.path={tmp_path}/nowhere: no such folder" in proc.stderr


def test_qlora_without_bitsandbytes_says_what_to_install(tmp_path):
    broken = tmp_path / "bitsandbytes"  # an environment where bitsandbytes cannot be imported
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('No module named bitsandbytes')\n")
    proc = run_entry("train.py", "recipe=tiny_qlora", check=False, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "quant.mode=nf4 needs bitsandbytes" in proc.stderr
    assert "pip install 'bitsandbytes>=0.50.2'" in proc.stderr


def test_finished_run_is_not_overwritten(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    proc = run_entry("train.py", f"output_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert f"output_dir={tmp_path} already holds a finished run" in proc.stderr
    assert "overwrite=true" in proc.stderr
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == "{}"  # nothing lost


def test_every_problem_is_reported_at_once():
    with pytest.raises(config.ConfigError) as err:
        config.load(compose("quant.mode=nf5", "model.dtype=float8", "lora.r=0"))
    text = str(err.value)
    assert "quant.mode=nf5" in text and "model.dtype=float8" in text and "lora.r=0" in text
