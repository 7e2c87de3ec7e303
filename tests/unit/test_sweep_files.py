"""Every shipped sweep file: wandb's format, a command wandb's agent can run, and overrides Hydra accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose
from finetune.config import ConfigError
from finetune.sweeps import space as sweep_space
from finetune.training import tracking

SWEEPS = sorted((ROOT / "launch" / "sweeps").glob("*.yaml"))


def is_group(key: str) -> bool:
    """`recipe=`, `tracking=`, `data=` ... choose a config file rather than set a value."""
    return key == "recipe" or (ROOT / "configs" / key).is_dir()


def test_the_issue_sweeps_ship():
    assert {p.name for p in SWEEPS} >= {"qlora_lr.yaml", "dpo_beta.yaml"}


def sample_values(params: dict) -> dict:
    """One trial's values as wandb's controller would send them: the last of `values`, the max of a range."""
    return {
        k: spec["value"] if "value" in spec else spec["values"][-1] if "values" in spec else spec["max"]
        for k, spec in params.items()
    }


def agent_argv(raw: dict, values: dict) -> list[str]:
    """The argv `wandb agent` runs for a trial, built with wandb's own sweep-command helpers and the
    substitution loop of wandb_agent.Agent._command_run (wandb 0.31)."""
    from wandb.sdk.launch.sweeps import utils

    sweep_vars = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], program=[raw.get("program")], env=["/usr/bin/env"])
    argv: list[str] = []
    for item in utils.create_sweep_command(list(raw["command"])):
        item = str(item)
        argv += (sweep_vars.get(item[2:-1]) or []) if item.startswith("${") and item.endswith("}") else [item]
    return argv


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_agent_command_is_accepted_by_hydra_with_the_trial_values(path, monkeypatch):
    monkeypatch.setenv("WANDB_RUN_ID", "r4nd0m")  # what `wandb agent` sets for each trial
    raw = yaml.safe_load(path.read_text())
    assert raw["method"] in ("grid", "random", "bayes") and raw["metric"]["goal"] in ("minimize", "maximize")
    # one argv word per item: "accelerate launch" as one item is a FileNotFoundError in the agent
    assert raw["command"][:4] == ["${env}", "accelerate", "launch", "finetune/train.py"]
    assert raw["command"][-1] == "${args_no_hyphens}"
    values = sample_values(raw["parameters"])
    argv = agent_argv(raw, values)
    assert argv[:4] == ["/usr/bin/env", "accelerate", "launch", "finetune/train.py"]
    overrides = argv[4:]
    assert overrides == [f"{k}={v}" for k, v in values.items()]  # key=value, no hyphens: Hydra's syntax
    cfg = compose(*overrides)
    for key, value in values.items():
        if not is_group(key) and key != "output_dir":  # groups and the interpolated output_dir: checked below
            assert OmegaConf.select(cfg, key, throw_on_missing=True) == pytest.approx(value), key
    recipe = OmegaConf.load(ROOT / "recipes" / f"{values['recipe']}.yaml")
    assert cfg.lora.alpha == recipe.lora.alpha and cfg.quant.mode == "nf4"
    assert cfg.tracking.backend == values["tracking"] == "wandb"  # online, the agent hears the metric via wandb
    assert cfg.output_dir == f"outputs/sweeps/{path.stem}/trial-r4nd0m"  # no two agents share a run directory
    # a local sweep renders the very same argv
    sweep = sweep_space.load(path, {})
    assert sweep_space.render(sweep, values, {}) == argv


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_swept_keys_are_the_config_keys_wandb_logs(path):
    """wandb's run config (tracking.flat_config) uses the same dotted names as the sweep's parameters, so the
    sweep's parallel-coordinates and importance plots line up with every run's logged config."""
    raw = yaml.safe_load(path.read_text())
    flat = tracking.flat_config(compose(f"recipe={raw['parameters']['recipe']['value']}"))
    swept = [k for k in raw["parameters"] if not is_group(k)]
    assert swept and all(k in flat for k in swept), [k for k in swept if k not in flat]


def test_yaml_exponent_without_a_dot_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "launch" / "sweeps" / "qlora_lr.yaml").read_text().replace("min: 3.0e-5", "min: 3e-5")
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        sweep_space.load(bad, {})
    assert f"{bad}: parameters.trainer.learning_rate.min: '3e-5' is text" in str(err.value)
    assert "write 1.0e-5" in str(err.value)


def test_sweep_file_problems_are_listed_together(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "metric": {"name": "eval/loss", "goal": "lowest"},
                "parameters": {"trainer.learning_rate": {"min": 1.0e-5, "max": 1.0e-3}},
                "command": ["${env}", "accelerate launch", "finetune/train.py", "${args}"],
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        sweep_space.load(bad, {})
    problems = err.value.problems
    assert any("metric: give `name`" in p and "`goal` (minimize or maximize)" in p for p in problems)
    assert any(
        "use command: [${env}, accelerate, launch, finetune/train.py, ${args_no_hyphens}]" in p for p in problems
    )
    assert any("parameters.trainer.learning_rate: grid needs `values: [...]`" in p for p in problems)


def test_command_line_override_fixes_a_swept_key():
    sweep = sweep_space.load(ROOT / "launch" / "sweeps" / "qlora_lr.yaml", {"lora.r": "16", "recipe": "tiny_lora"})
    assert list(sweep.space) == ["trainer.learning_rate"]
    assert sweep.fixed["lora.r"] == "16" and sweep.fixed["recipe"] == "tiny_lora"


def test_grid_proposals_walk_every_point_once(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "metric": {"name": "eval/loss", "goal": "minimize"},
                "parameters": {"lora.r": {"values": [4, 8]}, "trainer.learning_rate": {"values": [1.0e-4, 1.0e-3]}},
                "command": ["${env}", "accelerate", "launch", "finetune/train.py", "${args_no_hyphens}"],
            }
        )
    )
    sweep = sweep_space.load(grid, {})
    records: list[dict] = []
    for n in range(sweep_space.size(sweep)):
        records.append(
            {"trial": n + 1, "status": "finished", "metric": 1.0, "params": sweep_space.propose(sweep, records, 4, 0)}
        )
    assert [tuple(r["params"].values()) for r in records] == [(4, 1e-4), (4, 1e-3), (8, 1e-4), (8, 1e-3)]


def test_bayes_proposals_stay_in_range_and_replay_history():
    sweep = sweep_space.load(ROOT / "launch" / "sweeps" / "qlora_lr.yaml", {})
    records: list[dict] = []
    for n in range(6):  # TPE takes over after max(2, 12 // 4) = 3 random trials
        params = sweep_space.propose(sweep, records, 12, 0)
        assert 3.0e-5 <= params["trainer.learning_rate"] <= 1.0e-3 and params["lora.r"] in (8, 16, 32, 64)
        records.append(
            {
                "trial": n + 1,
                "status": "finished" if n != 2 else "failed",
                "params": params,
                "metric": abs(params["trainer.learning_rate"] - 2e-4) * 1e4 if n != 2 else None,
            }
        )
    # stateless: the same history gives the same next proposal (what makes a sweep resumable)
    assert sweep_space.propose(sweep, records, 12, 0) == sweep_space.propose(sweep, records, 12, 0)
    assert len({tuple(r["params"].values()) for r in records}) == 6


def test_metric_names_map_to_metrics_jsonl_keys():
    sweep = sweep_space.load(ROOT / "launch" / "sweeps" / "qlora_lr.yaml", {})
    assert sweep.metrics_key == "eval_loss"
    dpo = sweep_space.load(ROOT / "launch" / "sweeps" / "dpo_beta.yaml", {})
    assert (dpo.metrics_key, dpo.goal) == ("eval_rewards/accuracies", "maximize")


def test_shipped_files_state_their_commands():
    for path in SWEEPS:
        head = Path(path).read_text()
        assert "wandb sweep launch/sweeps/" in head and "python finetune/sweep.py launch/sweeps/" in head, path


def test_a_misspelled_key_is_caught_when_the_command_runs_train_py_through_program(tmp_path):
    """Issue 20: `${program}` in the command skipped the check, and every trial then failed on its own."""
    import pytest as _pytest

    from finetune import sweep

    path = tmp_path / "s.yaml"
    path.write_text(
        "program: finetune/train.py\nmethod: grid\nmetric: {name: eval/loss, goal: minimize}\n"
        "parameters:\n  recipe: {value: tiny_lora}\n  trainer.learnin_rate: {values: [0.001]}\n"
        "command:\n  - ${env}\n  - ${interpreter}\n  - ${program}\n  - ${args_no_hyphens}\n"
    )
    s = sweep_space.load(path, {})
    assert sweep.trains(s)
    with _pytest.raises(ConfigError, match="trainer.learnin_rate"):
        sweep.precheck(s, tmp_path / "out")


def tiny_sweep(tmp_path, metric: str, **extra) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "program": "finetune/train.py",
                "method": "grid",
                "metric": {"name": metric, "goal": "minimize"},
                "parameters": {"recipe": {"value": "tiny_lora"}, "lora.r": {"values": [4, 8]}, **extra},
                "command": ["${env}", "accelerate", "launch", "finetune/train.py", "${args_no_hyphens}"],
            }
        )
    )
    return path


def test_a_misspelled_metric_is_refused_before_the_first_trial(tmp_path):
    from finetune import sweep
    from finetune.sweeps import logged

    s = sweep_space.load(tiny_sweep(tmp_path, "eval/loos"), {"data.eval_fraction": "0.25"})
    with pytest.raises(ConfigError) as err:
        sweep.precheck(s, tmp_path / "out")
    assert err.value.problems[0].startswith(
        f"{s.path}: metric eval/loos: a trainer.kind=sft run logs no such "
        "metric; did you mean eval/loss? (it logs train/loss, "
    )
    assert logged.problem("eval/loss", "eval_loss", "sft", has_eval=False).startswith(
        "metric eval/loss: the trials have no eval split"
    )
    for metric, kind in (
        ("eval/loss", "sft"),
        ("train/loss", "sft"),
        ("eval/mean_token_accuracy", "sft"),
        ("eval/perplexity", "sft"),
        ("eval/rewards/accuracies", "dpo"),
        ("train/kl", "kto"),
    ):
        key = sweep_space.Sweep(Path("s"), "grid", metric, "minimize", [], None, None).metrics_key
        assert logged.problem(metric, key, kind, has_eval=True) is None, metric


def test_a_sweep_dir_refuses_other_overrides_naming_the_difference(tmp_path):
    from finetune.sweeps import records

    path = tiny_sweep(tmp_path, "eval/loss")
    out = tmp_path / "out"
    assert records.open_dir(sweep_space.load(path, {"recipe": "tiny_qlora", "trainer.max_steps": "4"}), path, out) == {}
    (out / "trials.jsonl").write_text(
        json.dumps({"trial": 1, "status": "finished", "params": {"lora.r": 4}, "metric": 1.5, "output_dir": "x"}) + "\n"
    )
    again = records.open_dir(sweep_space.load(path, {"recipe": "tiny_qlora", "trainer.max_steps": "4"}), path, out)
    assert list(again) == [1]  # the same command resumes
    with pytest.raises(ConfigError) as err:
        records.open_dir(sweep_space.load(path, {"recipe": "tiny_lora"}), path, out)
    assert err.value.problems == [
        f"sweep_dir={out} holds a sweep run with other overrides (recipe=tiny_qlora then, tiny_lora now; "
        "trainer.max_steps=4 then, (unset) now): its results would mix with these; rerun with the same overrides, "
        "or choose a new sweep_dir="
    ]
    assert json.loads((out / "overrides.json").read_text()) == {"recipe": "tiny_qlora", "trainer.max_steps": "4"}


def test_sweep_plot_has_one_slot_per_discrete_value_and_readable_log_ticks(tmp_path):
    from finetune.sweeps import report

    sweep = sweep_space.load(ROOT / "launch" / "sweeps" / "qlora_lr.yaml", {})
    done = [
        {
            "trial": i + 1,
            "status": "finished",
            "metric": 1.0 + i / 10,
            "output_dir": f"t{i}",
            "params": {"trainer.learning_rate": lr, "lora.r": r},
        }
        for i, (lr, r) in enumerate([(3.1e-5, 8), (1.2e-4, 16), (9.5e-4, 8), (4.0e-4, 64)])
    ]
    fig = report.figure(sweep, done)
    fig.canvas.draw()
    lr_ax, r_ax = fig.axes
    assert [t.get_text() for t in r_ax.get_xticklabels()] == ["8", "16", "32", "64"]  # categorical, file order
    assert r_ax.collections[0].get_offsets()[:, 0].tolist() == [0, 1, 0, 3]
    shown = [
        t
        for t in lr_ax.get_xticklabels()
        if t.get_text() and lr_ax.get_xlim()[0] <= t.get_position()[0] <= lr_ax.get_xlim()[1]
    ]
    assert len(shown) >= 3 and all(float(t.get_text()) > 0 for t in shown), [t.get_text() for t in shown]
    boxes = [t.get_window_extent() for t in shown] + [
        t.get_window_extent() for t in lr_ax.get_xminorticklabels() if t.get_text()
    ]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])  # no label over another
    report.write(sweep, done, tmp_path)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", ["sweep.py", "train.py", "plan.py"])
def test_help_exits_0_with_the_usage(script):
    from tests.conftest import run_entry

    out = run_entry(script, "--help").stdout
    if script == "sweep.py":
        assert out.startswith("usage: python finetune/sweep.py SWEEP_FILE") and "trials=N" in out
    else:  # Hydra's help: the config groups and every key
        assert "== Configuration groups ==" in out and "== Config ==" in out, out[:500]
