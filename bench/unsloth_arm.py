"""The peer arm: unsloth, as its users run it, in its own process (importing unsloth patches transformers, peft and
TRL for the rest of the process, so it must not share one with the other arms).

Same as every arm: the saved random-init checkpoint (4-bit through unsloth's own loader), LoRA r/alpha/targets,
dropout 0, the baseline's rows in the baseline's order with the same tokens per step, the baseline's starting LoRA
(copied in by name), the Trainer settings of plain_hf.training_args, the StepTimer and the gate. Unsloth's own:
`FastLanguageModel.from_pretrained` / `get_peft_model`, its kernels and loss, and its offloaded checkpointing
(`use_gradient_checkpointing="unsloth"`).

unsloth pins transformers and TRL below ours (2026.10.9: transformers <= 5.17, trl <= 1.15, datasets < 5): put its
wheels and those pins in a folder of their own and name it in UNSLOTH_SITE; only this process sees it
(bench/gpu_session.sh does this).

  python bench/unsloth_arm.py SPEC.json OUT.json      # what run() starts; SPEC from run(), OUT an ArmResult
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_lora(model, path: str) -> None:
    """The baseline's LoRA parameters before its first step, for the peer to start from."""
    import torch

    torch.save({n: p.detach().float().cpu() for n, p in model.named_parameters() if "lora_" in n}, path)


def load_lora(model, path: str) -> int:
    """Copy the saved LoRA parameters into `model` by name; every LoRA parameter must get one."""
    import torch

    saved = torch.load(path)
    mine = {n: p for n, p in model.named_parameters() if "lora_" in n}
    if set(mine) != set(saved):
        missing, extra = sorted(set(mine) - set(saved))[:3], sorted(set(saved) - set(mine))[:3]
        raise RuntimeError(f"unsloth's LoRA parameters differ from the baseline's: {missing} vs {extra}")
    with torch.no_grad():
        for n, p in mine.items():
            p.copy_(saved[n].to(p.dtype))
    return len(mine)


def run(a, quant: str, model_dir: str, rows, lora: dict, flops_per_token: float):
    """Start the peer's process on these rows; its perf.ArmResult. Its output is echoed; a failure raises with
    the end of it (the benchmark records the arm as FAILED and goes on)."""
    import perf

    with tempfile.TemporaryDirectory() as tmp:
        rows.save_to_disk(f"{tmp}/rows")
        spec = {
            "model_dir": model_dir,
            "quant": quant,
            "rows": f"{tmp}/rows",
            "lora": lora,
            "lora_init": a.lora_init if a.lora_init and Path(a.lora_init).is_file() else None,
            "flops_per_token": flops_per_token,
            "peak": a.peak,
            "run_dir": f"{tmp}/run",
            **{k: getattr(a, k) for k in ("seq_len", "micro_batch", "grad_accum", "warmup", "steps")},
        }
        Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        if os.environ.get("UNSLOTH_SITE"):
            env["PYTHONPATH"] = os.pathsep.join([os.environ["UNSLOTH_SITE"], env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, __file__, f"{tmp}/spec.json", f"{tmp}/out.json"], env=env, capture_output=True, text=True
        )
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]  # the exception, echoed in full above
            raise RuntimeError(f"unsloth arm exited {proc.returncode}: {last}")
        return perf.ArmResult(**json.loads(Path(f"{tmp}/out.json").read_text()))


def main(spec_path: str, out_path: str) -> None:
    import unsloth  # noqa: F401, I001  first, before what it patches: transformers, peft and TRL
    from unsloth import FastLanguageModel

    import dataclasses
    import importlib.metadata
    from types import SimpleNamespace

    import torch
    from datasets import load_from_disk
    from transformers import Trainer, default_data_collator

    sys.path[:0] = [str(ROOT / "bench")]
    import plain_hf
    import steps

    a = SimpleNamespace(**json.loads(Path(spec_path).read_text()))
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    model, _ = FastLanguageModel.from_pretrained(
        model_name=a.model_dir,
        max_seq_length=a.seq_len,
        dtype=torch.bfloat16 if cuda else torch.float32,
        load_in_4bit=a.quant != "none",
        load_in_16bit=a.quant == "none",
        fix_tokenizer=False,
        use_gradient_checkpointing="unsloth",
        local_files_only=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=a.lora["r"],
        lora_alpha=a.lora["alpha"],
        lora_dropout=a.lora["dropout"],
        bias="none",
        target_modules=LLAMA_LINEARS,
        use_gradient_checkpointing="unsloth",
        random_state=0,
    )
    copied = load_lora(model, a.lora_init) if a.lora_init else 0
    trainer = Trainer(
        model=model,
        args=plain_hf.training_args(a, Path(a.run_dir), gradient_checkpointing=False),
        train_dataset=load_from_disk(a.rows),
        data_collator=default_data_collator,
    )
    load_s = time.perf_counter() - t0
    timer, peak = steps.train(trainer)
    versions = {p: importlib.metadata.version(p) for p in ("unsloth", "unsloth_zoo", "transformers", "trl", "peft")}
    notes = [f"{k} {v}" for k, v in versions.items()] + [
        f"FastLanguageModel {'4-bit' if a.quant != 'none' else '16-bit'}, use_gradient_checkpointing='unsloth', "
        f"{'the baseline' if copied else 'its own'} starting LoRA"
    ]
    r = steps.result(a, "unsloth", timer, load_s, peak, a.flops_per_token, [])
    Path(out_path).write_text(json.dumps({**dataclasses.asdict(r), "notes": notes}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
