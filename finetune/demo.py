"""`make demo`: the whole toolkit on this machine, through the same commands a user types.

QLoRA SFT of the tiny Llama-2-architecture model (real tokenizer, bundled OpenAssistant conversations),
then DPO from that adapter on OpenAssistant's ranked replies, then a verified merged export.

`python -m finetune.demo [key=value ...]`: extra overrides go to both training runs, e.g. `trainer.max_steps=4
data.max_samples=32` for a quicker look (tests/integration/test_demo.py runs it so).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(title: str, args: list[str]) -> None:
    print(f"\n=== {title}\n$ {shlex.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable if a == "python" else a for a in args], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo step failed ({title}): exit code {proc.returncode}")
    print(f"--- {title}: {time.perf_counter() - t0:.0f} s", flush=True)


# `accelerate launch` (as `python -m ...`) for one process on this machine, every flag given, so no accelerate config
# file is needed; the tests launch the same way
ONE_PROCESS = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
ONE_PROCESS += ["--mixed_precision", "no", "--dynamo_backend", "no"]


def accelerate(*overrides: str) -> list[str]:
    """`accelerate launch finetune/train.py ...` with the launcher flags spelled out (no accelerate config needed)."""
    return ["python", *ONE_PROCESS, "finetune/train.py", *overrides]


def main(argv: list[str] | None = None) -> None:
    extra = list(sys.argv[1:] if argv is None else argv)  # key=value overrides for both training runs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything the demo needs is in this repository
    out = Path("outputs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    sft, dpo = out / "sft", out / "dpo"
    t0 = time.perf_counter()
    step("1/3 SFT: QLoRA on OpenAssistant conversations", accelerate("recipe=tiny_qlora", f"output_dir={sft}", *extra))
    # OpenAssistant's ranked replies (the SFT conversations' trees); pairs too long for the toy lengths are dropped,
    # never cut, so every answer keeps the EOS the model learns to stop at
    step(
        "2/3 DPO: from the SFT adapter, on OpenAssistant ranked replies (best vs a worse sibling)",
        accelerate(
            "recipe=tiny_dpo",
            f"init_adapter={sft}/adapter",
            "data=oasst_pairs",
            "data.too_long=drop",
            f"output_dir={dpo}",
            *extra,
        ),
    )
    step(
        "3/3 Export: merge into the dequantized 4-bit base and verify",
        ["python", "finetune/export.py", f"run={dpo}", "merge=true"],
    )
    py = os.path.relpath(sys.executable, ROOT) if sys.prefix != sys.base_prefix else "python"
    print(
        f"\nDone in {time.perf_counter() - t0:.0f} s.\n"
        f"  SFT adapter:   {sft / 'adapter'}\n"
        f"  DPO adapter:   {dpo / 'adapter'}\n"
        f"  merged model:  {dpo / 'merged'} (drift vs the adapter: see its README.md)\n"
        f"  metrics:       {sft / 'metrics.jsonl'}, {dpo / 'metrics.jsonl'} (curves: loss.png)\n"
        "What you trained is a toy: a 2-layer Llama 2 architecture from random weights, so its answers are noise.\n"
        "The pipeline is the real one (tokenizer, data, QLoRA, DPO, merge); point recipe= at a real model on a GPU.\n"
        f"Try it:          {py} finetune/chat.py run={dpo} generate.max_new_tokens=32\n"
        f"Evaluate it:     {py} finetune/evaluate.py run={sft}"
    )


if __name__ == "__main__":
    main()
