"""Every command in README.md and launch/README.md that can run on a CPU without a network runs here, as
written, with tiny overrides appended where it names a GPU recipe and placeholders (`outputs/<run>`) filled with
a finished tiny run. A README line that stops working fails CI; a new line must be classified below.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from finetune import demo

pytestmark = pytest.mark.slow

# appended to a command that names a GPU recipe (last value wins): the toy model, one step, little data
TINY = [
    "model=llama2_tiny",
    "quant=nf4",
    "trainer.liger=false",
    "trainer.packing=false",
    "trainer.max_steps=1",
    "trainer.micro_batch_size=2",
    "trainer.grad_accum=1",
    "trainer.logging_steps=1",
    "trainer.save_steps=1",
    "trainer.optim=adamw_torch",
    "data.max_samples=8",
    "data.max_length=256",
    "data.max_prompt_length=192",
    "data.too_long=truncate",
    "data.eval_fraction=0",
    "eval.samples=0",
]
GPU_RECIPES = re.compile(r"recipe=(q?lora_(7|13|70)b|dpo_q?lora_(7|13|70)b)(_\d+k)?\b")

# (pattern, why it does not run here); checked in order, first match wins
NOT_HERE = [
    (r"^make (demo|test)$", "the suite itself (CI runs `make test`; test_demo.py runs the demo's steps)"),
    (r"(^|\s)sbatch ", "needs a SLURM cluster: tests/integration/test_slurm.py submits it to a two-node test cluster"),
    (r"--num_processes 8|--num_machines 2", "needs 8 GPUs or two hosts (test_ddp.py and test_slurm.py run 2 ranks)"),
    (r"^wandb (sweep|agent)", "needs wandb's sweep server (finetune/sweep.py runs the same file locally, below)"),
    (r"data\.path=tatsu-lab/alpaca", "downloads a Hub dataset"),
    (r"^# |^<dir>/on ", "a prompt line of a shell session on the test cluster, not a command"),
    (r"^tensorboard ", "a viewer that serves until stopped"),
    (
        r"^ollama |^vllm |^docker |text-generation-launcher|^llama-cli ",
        "a serving stack that is not installed here (test_gguf.py loads the GGUF in llama.cpp's Python binding)",
    ),
    (r"^cd ", "changes the shell's directory for the serving lines after it"),
]


DOCS = ["README.md", "launch/README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def commands() -> list[tuple[str, str]]:
    """Every command line of every bash block in the README, launch/README.md and the docs site, once each (the
    README's headline commands are repeated on the docs pages)."""
    out, seen = [], set()
    for name in DOCS:
        text = (ROOT / name).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                line = re.sub(r"\s+", " ", line)
                if line and line not in seen:
                    seen.add(line)
                    out.append((name, line))
    return out


def why_not(line: str):
    return next((why for pattern, why in NOT_HERE if re.search(pattern, line)), None)


def fill(line: str, run, tmp, base: str) -> list[str]:
    """The README line with its placeholders filled, optional [...] words taken (their first alternative), and
    tiny overrides where it names a GPU recipe. `base`: a Llama 2 checkpoint folder (the tiny one)."""
    line = re.sub(r"output_dir=outputs/sft-\w+", f"output_dir={tmp / 'x'}", line)  # an SFT run the next line uses
    line = re.sub(r"outputs/(<[^>]+>|sft-\w+)", str(run), line)
    line = re.sub(r"(?<!\S)\[([^\]|]*)(\|[^\]]*)?\]", r"\1", line)  # `[what=merged|gguf]` -> `what=merged`
    line = line.replace("<branch>", "main").replace("/models/Llama-2-13b-hf", base)
    argv = shlex.split(line)
    if argv[:2] == ["accelerate", "launch"]:
        argv = [sys.executable, *demo.ONE_PROCESS, *argv[2:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    argv = [a.replace("trials=12", "trials=1") for a in argv]
    if GPU_RECIPES.search(line) and "--cfg" not in argv and "plan.py" not in line:
        argv += TINY + ([] if any(a.startswith("output_dir=") for a in argv) else [f"output_dir={tmp / 'new'}"])
        argv = [a for a in argv if not a.startswith("model.path=")] + ["model.random_init=true"]
    if "sweep.py" in line:  # the sweep file names a GPU recipe: every trial gets the tiny overrides
        argv += [o for o in TINY if not o.startswith("data.eval_fraction")]  # the metric is the eval loss
        argv += ["data.eval_fraction=0.25", f"sweep_dir={tmp / 'sweep'}", f"model.path={base}"]
    if "publish.py" in line:
        argv = [a if not a.startswith("what=") else "what=adapter" for a in argv]
    return [
        f"output_dir={tmp / 'x'}" if a.startswith(("output_dir=/runs", "output_dir=outputs/x")) else a for a in argv
    ]


ALL = commands()


def test_every_readme_command_is_classified():
    assert ALL, "no bash blocks found"


@pytest.mark.parametrize("where, line", ALL, ids=[line[:70] for _, line in ALL])
def test_readme_command_runs_as_written(where, line, tiny_sft_run, tmp_path):
    if why := why_not(line):
        pytest.skip(f"{where}: {why}")
    run = tmp_path / "run"
    if re.search(r"outputs/(<|sft-)", line):
        import shutil

        shutil.copytree(tiny_sft_run, run)
    (tmp_path / "faq.jsonl").write_text(
        "".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(8))
    )
    (tmp_path / "my_prompts.jsonl").write_text(json.dumps({"prompt": "Hi"}) + "\n")
    base = json.loads((tiny_sft_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    argv = fill(line, run, tmp_path, base)
    argv = [str(tmp_path / a) if a in ("faq.jsonl", "my_prompts.jsonl") else a for a in argv]
    argv = [
        a.replace("data.path=faq.jsonl", f"data.path={tmp_path / 'faq.jsonl'}")
        .replace("prompts=my_prompts.jsonl", f"prompts={tmp_path / 'my_prompts.jsonl'}")
        .replace("out=answers.jsonl", f"out={tmp_path / 'answers.jsonl'}")
        for a in argv
    ]
    if "train.py" in line and not GPU_RECIPES.search(line) and "--cfg" not in argv:
        argv += ["trainer.max_steps=1", "data.max_samples=8", "eval.samples=0", f"output_dir={tmp_path / 'run2'}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, input="")
    ok = {"plan.py": (0, 1)}.get(next((k for k in ("plan.py",) if k in line), ""), (0,))
    assert proc.returncode in ok, f"{where}: {line}\n$ {shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


def test_make_test_names_the_tests_that_skip_without_system_packages():
    """`make test` installs no system package; it says which tests will skip and the command that enables them."""
    proc = subprocess.run(
        ["make", "-s", "system-deps-note", "SYSTEM_PATH=/nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout == (
        "make test: tests/integration/test_slurm.py (slurm-wlm, munge) and tests/unit/"
        "test_modelfile.py's Go check (golang-go) will skip: their system packages are not "
        "installed; `sudo make system-deps` installs them\n"
    )
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "apt-get" not in dry  # nothing is installed as root by `make test`
