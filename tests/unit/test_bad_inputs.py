"""A corpus of bad inputs, each refused before anything is written or loaded with one message naming the key
(or file) and the fix. Every bug of this kind that is fixed adds its input here (issue 20's tester found these).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, compose, run_entry
from finetune.config import DataConfig, FieldsConfig, ModelConfig, UserError
from finetune.data import examples
from finetune.data import load as data_load
from finetune.model.tokenizer import load_tokenizer
from finetune.training import checks

# (overrides, text the one error must contain)
CONFIG_CORPUS = [
    (["+lora.rr=8"], "lora.rr: no such key; did you mean lora.r?"),
    (["++trainer.learning_rte=1e-4"], "trainer.learning_rte: no such key; did you mean trainer.learning_rate?"),
    (["trainer.learning_rate=-1"], "trainer.learning_rate=-1.0: must be > 0"),
    (["trainer.learning_rate=0"], "trainer.learning_rate=0.0: must be > 0"),
    (["trainer.lr_scheduler=cosin"], "trainer.lr_scheduler=cosin: transformers has no such lr scheduler; use one of"),
    (["trainer.optim=adam"], "trainer.optim=adam: transformers has no such optim; use one of"),
    (["lora.dropout=1.5"], "lora.dropout=1.5: a probability in [0, 1)"),
    (["lora.target_modules=[]"], "lora.target_modules is empty: LoRA would train nothing"),
    (["lora.target_modules=[q_proj,v_porj]"], "lora.target_modules: ['v_porj'] are not Llama linear layers"),
    (["lora.alpha=-16"], "lora.alpha=-16: must be > 0"),
    (["trainer.save_steps=0"], "trainer.save_steps=0: must be >= 1"),
    (["trainer.warmup_ratio=5"], "trainer.warmup_ratio=5.0: a fraction of the steps, in [0, 1)"),
    (["model.arch.hidden_size=63"], "model.arch.hidden_size=63 is not a multiple of model.arch.num_heads=4"),
    (["data.max_samples=0"], "data.max_samples=0: must be >= 1, or null for every example"),
    (["data.max_samples=-1"], "data.max_samples=-1: must be >= 1, or null for every example"),
    (["data.num_proc=0"], "data.num_proc=0: must be >= 1, or null for every core this process may use"),
    (["data.max_length=8192"], "data.max_length=8192 is longer than the model's context"),
    (["quant.mode=nf5"], "quant.mode=nf5: use one of none, nf4, fp4, int8"),
    (["data.too_long=cut"], "data.too_long=cut: use drop or truncate"),
    (["plan.gpus=0"], "plan.gpus=0: must be >= 1"),
]


@pytest.mark.parametrize("overrides, error", CONFIG_CORPUS, ids=[" ".join(o) for o, _ in CONFIG_CORPUS])
def test_bad_config_is_refused_before_anything_loads(overrides, error):
    problems = checks.problems(compose(*overrides))
    assert any(error in p for p in problems), problems


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    assert checks.problems(compose(f"output_dir={tmp_path / 'run'}")) == [
        f"output_dir={tmp_path / 'run'} is a file; give a folder for the run (it is created if missing)"
    ]


def test_corrupt_init_adapter_is_refused_before_loading(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "llama2_tiny"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x00" * 5)
    problems = checks.problems(compose(f"init_adapter={tmp_path}"))
    assert any(f"init_adapter={tmp_path}: adapter_model.safetensors cannot be read" in p for p in problems), problems


ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# (file name, content, text the one error must contain; None: the file is read)
DATA_CORPUS = [
    ("notes.txt", json.dumps(ROW), "unsupported file type; use one of .jsonl"),
    ("empty.jsonl", "", "the file is empty"),
    ("blank.jsonl", "  \n\n ", "the file is empty"),
    ("cut.jsonl.gz", gzip.compress((json.dumps(ROW) + "\n").encode())[:-6], "not a complete gzip file"),
    ("plain.jsonl.gz", json.dumps(ROW), "not a complete gzip file"),
    ("bom.jsonl", "\ufeff" + json.dumps(ROW) + "\n", None),
    ("UPPER.JSONL", json.dumps(ROW) + "\n", None),
    (
        "empty_answer.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}) + "\n",
        "message 1 (assistant) is empty",
    ),
    # JSON that is not JSON Lines: a list (pretty or on one line), a pretty-printed record, commas between records
    ("list.jsonl", json.dumps([ROW, ROW], indent=2), "the file is one JSON list of records, not JSON Lines"),
    ("one_line_list.jsonl", json.dumps([ROW, ROW]) + "\n", "the file is one JSON list of records, not JSON Lines"),
    ("pretty.jsonl", json.dumps(ROW, indent=2) + "\n", "a record spans several lines (pretty-printed JSON)"),
    ("commas.jsonl", f"{json.dumps(ROW)},\n{json.dumps(ROW)}\n", "JSON Lines has no commas between records"),
    ("trailing.json", f"[{json.dumps(ROW)},\n]", ":2: malformed JSON (Expecting value at column 1); a ',' before ']'"),
    # Excel's CSV in Latin-1: datasets said only "An error occurred while generating the dataset"
    (
        "latin1.csv",
        b"question,answer\nCaf\xe9?,Oui\n",
        ":2: not UTF-8 (byte offset 19 in the file: b'\\xe9'); re-encode",
    ),
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ModelConfig(name="llama2", path=str(ROOT / "data/llama2-tokenizer")))


@pytest.mark.parametrize("name, content, error", DATA_CORPUS, ids=[c[0] for c in DATA_CORPUS])
def test_bad_data_file_is_one_error_naming_the_file(tmp_path, tok, name, content, error):
    path = write(tmp_path / name, content)
    dcfg = DataConfig(name="bad", adapter="messages", path=str(path), max_length=256, cache=False)
    if error is None:
        assert len(data_load.load(dcfg, tok).train) == 1
        return
    with pytest.raises(UserError) as err:
        data_load.load(dcfg, tok)
    assert str(path) in str(err.value) and error in str(err.value)


def test_hidden_folders_in_a_data_folder_are_not_read_twice(tmp_path, tok):
    write(tmp_path / "data" / "part.jsonl", json.dumps(ROW) + "\n")
    write(tmp_path / "data" / ".ipynb_checkpoints" / "part-checkpoint.jsonl", json.dumps(ROW) + "\n")
    dcfg = DataConfig(name="x", adapter="messages", path=str(tmp_path / "data"), max_length=256, cache=False)
    assert data_load.load(dcfg, tok).stats.records == 1


def test_skipped_empty_answers_are_counted(tmp_path, tok):
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in (ROW, bad)) + "\n")
    dcfg = DataConfig(name="x", adapter="messages", path=str(path), max_length=256, cache=False, invalid="skip")
    stats = data_load.load(dcfg, tok).stats
    assert stats.skipped == {"message N (assistant) is empty (an empty answer teaches the model to stop at once)": 1}


@pytest.mark.slow
def test_a_bad_data_file_through_train_py_is_one_error_line_and_no_run_dir(tmp_path):
    path = write(tmp_path / "notes.txt", json.dumps(ROW))
    out = tmp_path / "run"
    proc = run_entry("train.py", "data=messages", f"data.path={path}", f"output_dir={out}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {path}: unsupported file type; use one of .jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_a_hub_base_that_cannot_be_had_is_one_error_line_and_no_run_dir(tmp_path):
    """A GPU recipe's Hub base offline (a new user's first `train.py recipe=qlora_13b` on a laptop): one line naming
    model.path and the fix, before the run directory exists (it was a 40-line traceback after it)."""
    out = tmp_path / "run"
    proc = run_entry(
        "train.py",
        "recipe=tiny_qlora",
        "model.path=meta-llama/Llama-2-13b-hf",
        "model.random_init=false",
        "model.tokenizer=null",
        f"output_dir={out}",
        check=False,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )  # an empty Hub cache
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: model.path=meta-llama/Llama-2-13b-hf: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
        "download it once with network (`hf download meta-llama/Llama-2-13b-hf`), or set model.path= to a local "
        "checkpoint folder"
    ]
    assert not out.exists()


# ---------------------------------------------------------------------------------- first-hour mistakes
# Hydra's own errors (misspelled key or recipe, wrong type, unparsable override) and data-schema mistakes: one
# `error:` line in our words and exit code 2, Hydra's "+key=" advice never shown, and torch never imported first.
HYDRA_CORPUS = [
    (["trainer.learnin_rate=1e-3"], "trainer.learnin_rate: no such key; did you mean trainer.learning_rate?"),
    (["lora.rr=8"], "lora.rr: no such key; did you mean lora.r?"),
    (
        ["recipe=tiny_qlra"],
        "recipe=tiny_qlra: no such recipe; did you mean recipe=tiny_qlora? available: dpo_lora_7b, dpo_qlora_13b",
    ),
    (["data=jsnl"], "data=jsnl: no such data; did you mean data=jsonl? available: alpaca, hh_rlhf, jsonl"),
    (["lora.r=abc"], "lora.r=abc: lora.r takes an integer, not 'abc'"),
    (["trainer.fused_lora=maybe"], "trainer.fused_lora=maybe: trainer.fused_lora takes true or false, not 'maybe'"),
    (["data.max_samples=all"], "data.max_samples=all: data.max_samples takes an integer or null, not 'all'"),
    (["+lora.r=8"], "+lora.r=8: lora.r already exists; write lora.r=8"),
    (["lora.r=["], "cannot read the override 'lora.r=['"),
    (
        ["lora.target_modules=q_proj"],
        "lora.target_modules=q_proj: lora.target_modules takes a list like [a,b], not 'q_proj'; write "
        "lora.target_modules=[q_proj]",
    ),
    (  # bash expands ~ after = only in a valid variable name: data.path=~/x reaches Hydra as it is
        ["data.path=~/chats.jsonl"],
        "cannot read the override 'data.path=~/chats.jsonl': Hydra does not expand ~ in a value; write "
        """data.path=$HOME/chats.jsonl (the shell expands it) or quote it: 'data.path="~/chats.jsonl"'""",
    ),
]


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("overrides, error", HYDRA_CORPUS, ids=[" ".join(o) for o, _ in HYDRA_CORPUS])
def test_hydras_own_errors_are_our_one_line(overrides, error):
    from hydra.errors import HydraException

    from finetune.config.hydra_errors import explain

    with pytest.raises(HydraException) as err:
        compose(*overrides)
    line = explain(err.value)
    assert line.startswith(error) and "\n" not in line, line
    assert "+" not in line.replace("+lora.r=8:", ""), line  # never Hydra's "append with +key=" advice


@pytest.mark.parametrize(
    "script, override, error",
    [
        (
            "train.py",
            "trainer.learnin_rate=1e-3",
            "trainer.learnin_rate: no such key; did you mean trainer.learning_rate?",
        ),
        ("export.py", "merge=maybe", "merge=maybe: merge takes true or false, not 'maybe'"),
        ("evaluate.py", "splt=eval", "splt: no such key; did you mean split?"),
        (
            "evaluate.py",
            "benchmarks=mmlu",
            "benchmarks.tasks=mmlu: benchmarks.tasks takes a list like [a,b], not 'mmlu'; write "
            "benchmarks.tasks=[mmlu]",
        ),
    ],
)
def test_hydras_errors_through_an_entry_point_exit_2_with_one_line(script, override, error):
    proc = run_entry(script, override, check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and lines == [f"error: {error}"], lines


def importtime_modules(stderr: str) -> set[str]:
    """Top-level packages imported, from `python -X importtime`'s report."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize("script", ["train.py", "preview.py"])
def test_a_wrong_data_field_is_every_field_and_its_fix_before_torch_loads(tmp_path, script):
    record = {"ticket_question": "Jammed?", "staff_reply": "Tray 2."}
    path = write(tmp_path / "tickets.jsonl", json.dumps(record) + "\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(ROOT / "finetune" / script),
            "data=jsonl",
            f"data.path={path}",
            "data.fields.prompt=question",
            "data.fields.response=answer",
            f"output_dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        f"error: {path}:1: missing fields 'question', 'answer' (the record has ['staff_reply', 'ticket_question']); "
        "set data.fields.prompt=ticket_question data.fields.response=staff_reply, or pick another data.adapter"
    ], proc.stderr[-3000:]
    assert not {"torch", "transformers"} & importtime_modules(proc.stderr)
    assert not out.exists()


def test_sft_data_for_dpo_is_refused_before_torch_loads(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            str(ROOT / "finetune" / "train.py"),
            "recipe=tiny_dpo",
            "data=self_instruct",
            f"output_dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not preference pairs (prompt/chosen/rejected)" in proc.stderr, proc.stderr[-3000:]
    assert "torch" not in importtime_modules(proc.stderr) and not out.exists()


def test_the_lora_variants_on_are_named_in_one_line():
    from finetune import config

    assert config.variants_line(compose("recipe=tiny_lora")) is None
    assert config.variants_line(
        compose(
            "recipe=tiny_orpo",
            "lora.use_dora=true",
            "trainer.neftune_alpha=5",
            "lora.use_rslora=true",
            "lora.init=loftq",
        )
    ) == (
        "LoRA variants on: DoRA (lora.use_dora=true), rsLoRA (lora.use_rslora=true), LoftQ init (lora.init=loftq), "
        "NEFTune (trainer.neftune_alpha=5.0)"
    )


def tiny_chat_model(**config):
    """The real tokenizer and a one-layer random Llama: chat's loop without loading a run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(ModelConfig(name="llama2", path=str(ROOT / "data/llama2-tokenizer")))
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return tok, LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2, vocab_size=32000, **config))


def test_chat_help_and_unknown_commands_are_never_sent_to_the_model(monkeypatch, capsys):
    import io

    from finetune import chat
    from finetune.model.generate import greedy

    tok, model = tiny_chat_model()
    monkeypatch.setattr("sys.stdin", io.StringIO("/help\n/sytem Be brief.\nHi\n"))
    chat.interactive(model, tok, greedy(2, tok.pad_id), None)
    out = capsys.readouterr().out
    assert out.count("commands: /reset, /system <text>, /quit (or Ctrl-D)") == 2
    assert out.count("assistant> ") == 1  # only "Hi" reached the model


def test_evaluate_refuses_a_missing_run_before_torch_loads(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "finetune" / "evaluate.py"), f"run={tmp_path / 'nope'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and f"run={tmp_path / 'nope'}: no config.yaml there" in proc.stderr, proc.stderr[-2000:]
    assert "torch" not in importtime_modules(proc.stderr)


# Budgets, disks and weights the machine does not have: each one line before any weight loads.


def test_a_memory_budget_larger_than_this_machines_ram_is_refused_naming_both():
    """On a CPU a run trains in RAM: 900TB was accepted (the plan was made for an imagined H100)."""
    ram = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1]) * 1024
    problems = checks.problems(compose("recipe=tiny_qlora", "trainer.memory_budget=900TB"))
    assert (
        f"trainer.memory_budget=900TB (921,600.0 GiB) is more than this machine's RAM (no GPU) has "
        f"({ram / 2**30:,.1f} GiB); give at most {ram // 2**30}GB"
    ) in problems, problems
    assert not any(
        "memory_budget" in p for p in checks.problems(compose("recipe=tiny_qlora", "trainer.memory_budget=1GB"))
    )


def test_a_memory_budget_larger_than_the_planned_gpu_is_refused_naming_both():
    from finetune import config
    from finetune.planning.report import budget_plan

    with pytest.raises(UserError) as err:
        budget_plan(config.load(compose("recipe=qlora_7b", "trainer.memory_budget=60GB", "plan.gpu=a100-40gb")))
    assert str(err.value).splitlines()[-1] == (
        "  - trainer.memory_budget=60GB (60.0 GiB) is more than the GPU the plan is for (plan.gpu) has (39.4 GiB); "
        "give at most 39GB, or auto for the GPU's free memory"
    )


def lora_weights(path, value: float = 0.01):
    """adapter_model.safetensors shaped for the tiny model (r=8 on q_proj of both layers), every value `value`."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    prefix = "base_model.model.model.layers.{}.self_attn.q_proj.lora_{}.weight"
    save_file(
        {prefix.format(i, "A"): torch.full((8, 64), value) for i in range(2)}
        | {prefix.format(i, "B"): torch.full((64, 8), value) for i in range(2)},
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "llama2_tiny"}))
    return path


def test_adapter_weights_holding_nan_on_a_matching_base_are_one_line(tmp_path):
    """Header and shapes fit the base (lora.check passes them); the values are garbage."""
    adapter = lora_weights(tmp_path / "adapter", float("nan"))
    assert checks.problems(compose(f"init_adapter={adapter}")) == [
        f"init_adapter={adapter}: adapter_model.safetensors holds NaN or infinite values (4 tensors, first "
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight); point it at a finished run's adapter/ "
        "folder, or retrain the adapter"
    ]
    assert checks.problems(compose(f"init_adapter={lora_weights(tmp_path / 'good')}")) == []


def test_a_damaged_latest_checkpoint_is_one_line_naming_the_file_and_the_earlier_one(tmp_path):
    """A resume reads the latest checkpoint in full first: a NaN adapter, a cut or bit-flipped optimizer.pt, a
    cut trainer_state.json each stop the run before the base loads (they ended in peft's or Trainer's traceback)."""
    import torch

    run = tmp_path / "run"
    for step in (2, 4):
        ckpt = lora_weights(run / "checkpoints" / f"checkpoint-{step}")
        torch.save({"state": {0: {"exp_avg": torch.ones(4096)}}}, ckpt / "optimizer.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert checks.problems(compose(f"output_dir={run}")) == []
    latest = run / "checkpoints" / "checkpoint-4"
    intact = {f: f.read_bytes() for f in latest.iterdir()}
    fix = (
        f", so the run cannot resume from checkpoint-4; delete {latest} to resume from checkpoint-2, or start over "
        "with overwrite=true"
    )
    optimizer = bytearray(intact[latest / "optimizer.pt"])
    optimizer[-3000:-2000] = b"\x01" * 1000  # inside the tensor's bytes: the zip still opens
    for name, content, why in [
        (
            "adapter_model.safetensors",
            lora_weights(tmp_path / "nan", float("inf")).joinpath("adapter_model.safetensors").read_bytes(),
            "holds NaN or infinite values (4 tensors, first ",
        ),
        ("optimizer.pt", bytes(optimizer), "is damaged (its part optimizer/data/0 fails its checksum)"),
        ("optimizer.pt", intact[latest / "optimizer.pt"][:-100], "cannot be read (BadZipFile: "),
        ("trainer_state.json", b'{"global_step": 4', "cannot be read (JSONDecodeError: "),
    ]:
        (latest / name).write_bytes(content)
        problems = checks.problems(compose(f"output_dir={run}"))
        assert (
            len(problems) == 1
            and problems[0].startswith(f"output_dir={run}: checkpoint-4/{name} {why}")
            and problems[0].endswith(fix)
        ), (name, problems)
        (latest / name).write_bytes(intact[latest / name])
    assert checks.problems(compose(f"output_dir={run}", "overwrite=true")) == []


@pytest.mark.parametrize("name", ["trainer_state.json", "adapter_model.safetensors"])
def test_a_file_deleted_from_the_latest_checkpoint_is_one_line_before_the_resume(tmp_path, name):
    """The resume read it after the base loaded: a FileNotFoundError traceback from Trainer (trainer_state.json),
    or peft's 'Can't find a valid checkpoint' (the adapter)."""
    run = tmp_path / "run"
    for step in (2, 4):
        ckpt = lora_weights(run / "checkpoints" / f"checkpoint-{step}")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    latest = run / "checkpoints" / "checkpoint-4"
    (latest / name).unlink()
    assert checks.problems(compose(f"output_dir={run}")) == [
        f"output_dir={run}: checkpoint-4/{name} is missing, so the run cannot resume from checkpoint-4; delete "
        f"{latest} to resume from checkpoint-2, or start over with overwrite=true"
    ]


@pytest.mark.slow
def test_a_hub_base_on_a_machine_without_network_is_one_request_and_one_line(tmp_path):
    """HF_HUB_OFFLINE unset and the Hub unreachable (a port nothing listens on): the line names why (the connection
    error's type), before the tokenizer or any data is fetched, and nothing is written."""
    import time

    start = time.monotonic()
    proc = run_entry(
        "train.py",
        "recipe=tiny_qlora",
        "model.path=meta-llama/Llama-2-13b-hf",
        "model.random_init=false",
        "model.tokenizer=null",
        f"output_dir={tmp_path / 'run'}",
        check=False,
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: model.path=meta-llama/Llama-2-13b-hf: not in the local Hugging Face cache and the Hub could not be "
        "reached (ConnectError); download it once with network (`hf download meta-llama/Llama-2-13b-hf`), or set "
        "model.path= to a local checkpoint folder"
    ]
    assert "etry" not in proc.stderr + proc.stdout and not (tmp_path / "run").exists(), proc.stderr[-2000:]
    print(f"time to the error: {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize(
    "script, inside, extra",
    [
        ("export.py", "checkpoints/checkpoint-2", "merge=true"),
        ("chat.py", "adapter", "merged=false"),
        ("publish.py", "adapter", "repo_id=me/x"),
    ],
)
def test_run_pointed_inside_a_run_names_the_run_dir(tmp_path, script, inside, extra):
    """run= at the run's adapter/ or a checkpoint-N (what a newcomer points at) said only that no config.yaml or
    adapter/adapter_config.json was there."""
    run = tmp_path / "run"
    write(run / "config.yaml", "{}\n")
    write(run / "adapter" / "adapter_config.json", "{}")
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    proc = run_entry(script, f"run={run / inside}", extra, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        f"run={run / inside} is a folder inside the training run {run}; give the run directory itself: run={run}"
        in proc.stderr
    )


OPENAI = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
# (the data= adapter a newcomer gave, their record, the end of the one error): a file in a shape another data=
# reads as it is was answered with a field mapping that could not work (data.fields.prompt=messages)
SHAPE_CORPUS = [
    (
        "oasst",
        OPENAI,
        "missing field 'prompt' (the record has ['messages']); it is OpenAI-style chat (role/content messages): "
        "use data=messages with your data.path",
    ),
    (
        "sharegpt",
        OPENAI,
        "missing field 'conversations' (the record has ['messages']); it is OpenAI-style chat (role/content "
        "messages): use data=messages with your data.path",
    ),
    (
        "messages",
        SHAREGPT,
        "missing field 'messages' (the record has ['conversations']); it is ShareGPT-style chat (from/value "
        "turns): use data=sharegpt with your data.path",
    ),
    (
        "messages",
        {"messages": SHAREGPT["conversations"]},
        "message {'from': 'human', 'value': 'Hi'} lacks 'role' or 'content'; it is ShareGPT-style chat (from/value "
        "turns): use data=sharegpt data.fields.conversations=messages with your data.path",
    ),
    (
        "messages",
        {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
        "missing field 'messages' (the record has ['input', 'instruction', 'output']); it is an Alpaca record "
        "(instruction, input, output): use data=alpaca with your data.path",
    ),
    (
        "oasst",
        {"question": "Hi?", "answer": "Hello."},
        "missing field 'prompt' (the record has ['answer', 'question']); for one prompt and one answer column use "
        "data=jsonl data.fields.prompt=question data.fields.response=answer",
    ),
    (
        "oasst_pairs",
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        "message Hi? lacks 'role' or 'text'; it is a preference pair (prompt, chosen, rejected): use data=jsonl "
        "with your data.path",
    ),
]


@pytest.mark.parametrize("adapter, record, error", SHAPE_CORPUS, ids=[f"{c[0]}-{sorted(c[1])}" for c in SHAPE_CORPUS])
def test_data_in_another_known_shape_names_the_data_that_reads_it(tmp_path, adapter, record, error):
    path = write(tmp_path / "mine.jsonl", json.dumps(record) + "\n")
    with pytest.raises(UserError) as err:
        examples.examples(DataConfig(name="mine", adapter=adapter, path=str(path)))
    assert str(err.value) == f"{path}:1: {error}"


def test_own_chat_file_with_the_default_data_is_one_line_naming_data_messages(tmp_path):
    """`train.py data.path=mine.jsonl` (the default data=oasst) is the first thing a newcomer with chat data runs."""
    path = write(tmp_path / "mine.jsonl", json.dumps(OPENAI) + "\n")
    out = tmp_path / "run"
    proc = run_entry("train.py", f"data.path={path}", f"output_dir={out}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: {path}:1: missing field 'prompt' (the record has ['messages']); it is OpenAI-style chat "
        "(role/content messages): use data=messages with your data.path"
    ]
    assert not out.exists()


class Typed:
    """stdin as a user types it: each line in turn, then Ctrl-C at the prompt; `on_line(line)` runs as one is read."""

    def __init__(self, lines: list[str], on_line=lambda line: None):
        self.lines, self.on_line = list(lines), on_line

    def readline(self) -> str:
        if not self.lines:
            raise KeyboardInterrupt
        self.on_line(self.lines[0])
        return self.lines.pop(0) + "\n"


def test_ctrl_c_in_chat_stops_the_answer_then_ends_the_chat_without_a_traceback(monkeypatch, capsys):
    """Ctrl-C at chat's prompt (how most people leave a REPL) was a KeyboardInterrupt traceback, exit 1."""
    import os
    import signal
    import threading

    from finetune import chat
    from finetune.model.generate import greedy

    tok, model = tiny_chat_model(max_position_embeddings=5000)
    gen = greedy(4000, tok.pad_id)
    gen.min_new_tokens = gen.max_new_tokens  # no early EOS: the answer is still going when Ctrl-C comes
    ctrl_c = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    monkeypatch.setattr("sys.stdin", Typed(["Hi"], lambda line: ctrl_c.start()))
    was = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a terminal (not a test's)
    try:
        chat.interactive(model, tok, gen, None)
    except KeyboardInterrupt:  # caught here: one escaping would end the whole pytest session
        pytest.fail("Ctrl-C escaped chat.interactive (the user sees a KeyboardInterrupt traceback)")
    finally:
        signal.signal(signal.SIGINT, was)
    out = capsys.readouterr().out
    assert "\n(answer stopped; not kept in the history)\n\nuser> \n" in out


def test_ctrl_c_in_any_entry_point_is_one_line_and_exit_130(capsys):
    from finetune.runtime import console

    @console.exit_cleanly
    def main():
        raise KeyboardInterrupt

    try:
        with pytest.raises(SystemExit) as end:
            main()
    except KeyboardInterrupt:  # caught here: one escaping would end the whole pytest session
        pytest.fail("Ctrl-C escaped console.exit_cleanly (the user sees a KeyboardInterrupt traceback)")
    assert end.value.code == 130
    assert capsys.readouterr().err == console.INTERRUPTED + "\n"


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_csv_with_another_separator_says_so_instead_of_mapping_its_one_column(tmp_path, sep):
    """Excel in many locales writes ';': the file read as one column was answered with
    data.fields.response=question;answer."""
    path = write(tmp_path / "faq.csv", f"question{sep}answer\nWhat is 2+2?{sep}4\n")
    fields = FieldsConfig(prompt="question", response="answer")
    with pytest.raises(UserError) as err:
        examples.examples(DataConfig(name="faq", adapter="fields", path=str(path), fields=fields))
    assert str(err.value) == (
        f"{path} row 1: missing fields 'question', 'answer' (the record has {[f'question{sep}answer']}); the columns "
        f"are separated by {sep!r}, not commas: save the file as comma-separated CSV (or as JSON Lines)"
    )


def test_a_prompts_file_of_whole_conversations_is_refused_in_plain_words(tmp_path, tok):
    """chat.py prompts=<the training file>: every line ends with the answer."""
    from finetune.data.prompts import read_prompts

    path = write(tmp_path / "train.jsonl", json.dumps(ROW) + "\n")
    with pytest.raises(UserError) as err:
        read_prompts(str(path), tok.sp)
    assert str(err.value) == (
        f"{path}:1: the conversation ends with an assistant message; a prompt must end with a user message"
    )


def test_evaluate_on_a_file_too_small_for_its_eval_fraction_says_so(tmp_path, tok):
    """Two examples at data.eval_fraction=0.05 hold none out; the error said data.eval_fraction=0 and advised 0.1."""
    from finetune.evaluate import split_dataset

    path = write(tmp_path / "two.jsonl", (json.dumps(ROW) + "\n") * 2)
    dcfg = DataConfig(name="messages", adapter="messages", path=str(path), eval_fraction=0.05, cache=False)
    with pytest.raises(UserError) as err:
        split_dataset(dcfg, tok, "eval")
    assert str(err.value).splitlines()[1:] == [
        "  - split=eval: data=messages has no held-out split (data.eval_fraction=0.05 of 2 examples rounds to none); "
        "give data.eval_path=<held-out file>, or split=train or split=all"
    ]


@pytest.mark.parametrize("script", ["chat.py", "export.py"])
def test_run_pointed_at_the_folder_of_runs_names_the_latest(tmp_path, script):
    import os

    for i, name in enumerate(("a", "b")):
        write(tmp_path / "outputs" / name / "config.yaml", "{}\n")
        os.utime(tmp_path / "outputs" / name / "config.yaml", (1e9 + i, 1e9 + i))
    proc = run_entry(script, f"run={tmp_path / 'outputs'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (
        f"run={tmp_path / 'outputs'} holds 2 training run(s), not one; give one, e.g. the latest: "
        f"run={tmp_path / 'outputs' / 'b'}" in proc.stderr
    )


def test_init_adapter_at_the_run_directory_names_its_adapter_folder(tmp_path):
    sft = tmp_path / "sft"
    write(sft / "adapter" / "adapter_config.json", "{}")
    problems = checks.problems(compose("recipe=tiny_dpo", f"init_adapter={sft}"))
    assert f"init_adapter={sft} is a training run; give its adapter: init_adapter={sft / 'adapter'}" in problems


def test_init_adapter_under_the_home_folder_is_read_there(tmp_path, monkeypatch):
    """A quoted '~' reaches the config as typed: init_adapter="~/runs/sft/adapter" was 'no adapter_config.json'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    sft = tmp_path / "runs" / "sft"
    write(sft / "adapter" / "adapter_config.json", "{}")
    problems = checks.problems(compose("recipe=tiny_dpo", 'init_adapter="~/runs/sft"'))
    assert "init_adapter=~/runs/sft is a training run; give its adapter: init_adapter=~/runs/sft/adapter" in problems
    problems = checks.problems(compose("recipe=tiny_dpo", 'init_adapter="~/runs/sft/adapter"'))
    assert not [p for p in problems if "no adapter_config.json there" in p], problems


def test_a_missing_local_folder_read_as_a_hub_id_says_it_is_not_here_either(tmp_path, monkeypatch):
    """`data.path=mydata/chats` from the wrong folder was only a Hub error (offline, or no such dataset)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        examples.examples(DataConfig(name="mine", adapter="messages", path="mydata/chats"))
    assert str(err.value).endswith(f"; nor is there a local file or folder mydata/chats in {tmp_path}")
