"""Peak RSS of the streaming merge (finetune/ship/merge.py) vs peft's merge_and_unload, on a random Llama checkpoint.

    .venv/bin/python bench/merge_memory.py                    # ~1.9 GB bf16 checkpoint in 8 shards (~3 min on 2 cores)
    .venv/bin/python bench/merge_memory.py --layers 4 --hidden 512 --intermediate 1376   # a quick smoke run

Writes a random-weight Llama checkpoint (bf16, sharded like the Hub's) and a random LoRA adapter (r=16 on all
seven projections), then runs each merge in its own process and reads that process's peak RSS
(`ru_maxrss`, which counts touched memory-mapped file pages too). Every step runs in a child of a parent that
never imports torch: Linux carries a parent's peak RSS into its children across fork and exec. Both outputs are
compared tensor by tensor.
Prints a Markdown table; bench/results/merge_memory.md holds a recorded one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_checkpoint(a, base: Path, adapter: Path) -> int:
    """Random bf16 weights written shard by shard (never the whole model in memory); returns the parameter count."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 128,
        num_key_value_heads=a.hidden // 128,
        vocab_size=32000,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    h, i, v = a.hidden, a.intermediate, 32000
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(a.layers):
        p = f"model.layers.{n}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (h, h),
                p + "self_attn.v_proj.weight": (h, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    base.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    groups, size = [[]], 0
    for name, shape in shapes.items():
        n = 2 * torch.Size(shape).numel()
        if groups[-1] and size + n > a.shard_mb * 1e6:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    weight_map, total = {}, 0
    for k, names in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16) for n in names}
        save_file(tensors, str(base / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
        total += sum(t.numel() for t in tensors.values())
    (base / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 2 * total}, "weight_map": weight_map})
    )
    cfg.save_pretrained(base)
    lora, r = {}, 16
    for name, shape in shapes.items():
        if any(f".{p}." in name for p in PROJ):
            mod = "base_model.model." + name.removesuffix(".weight")
            lora[mod + ".lora_A.weight"] = torch.randn(r, shape[1], generator=gen) * 0.01
            lora[mod + ".lora_B.weight"] = torch.randn(shape[0], r, generator=gen) * 0.01
    adapter.mkdir(parents=True)
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    LoraConfig(
        r=r, lora_alpha=32, target_modules=PROJ, task_type="CAUSAL_LM", base_model_name_or_path=str(base)
    ).save_pretrained(adapter)
    return total


def run_stream(base: Path, adapter: Path, out: Path, shard_mb: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from finetune.ship import merge

    after_import = peak_mb()
    t = time.perf_counter()
    merge.merge(base, merge.read_adapter(adapter), out, max_shard_bytes=int(shard_mb * 1e6))
    return {"after_import_mb": after_import, "peak_mb": peak_mb(), "seconds": time.perf_counter() - t}


def run_peft(base: Path, adapter: Path, out: Path, shard_mb: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    after_import = peak_mb()
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, max_shard_size=f"{shard_mb}MB")
    return {"after_import_mb": after_import, "peak_mb": peak_mb(), "seconds": time.perf_counter() - t}


def compare(a: Path, b: Path) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max(|a|)) over every tensor, read one output shard at a time."""
    from safetensors import safe_open

    def index(d):
        return json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]

    ia, ib = index(a), index(b)
    assert set(ia) == set(ib), "the two merges wrote different tensor names"
    worst = rel = 0.0
    for shard in sorted(set(ia.values())):
        with safe_open(str(a / shard), "pt") as fa:
            for name in fa.keys():
                with safe_open(str(b / ib[name]), "pt") as fb:
                    x, y = fa.get_tensor(name).float(), fb.get_tensor(name).float()
                d = float((x - y).abs().max())
                worst, rel = max(worst, d), max(rel, d / max(float(x.abs().max()), 1e-12))
    return worst, rel


def child(step: str, a) -> dict:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k != "child"]
    out = subprocess.run([sys.executable, __file__, "--child", step, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5504)
    ap.add_argument("--shard-mb", type=int, default=250)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-merge")
    ap.add_argument("--child", choices=["make", "stream", "peft", "compare"])
    a = ap.parse_args()
    base, adapter = a.work / "base", a.work / "adapter"
    if a.child == "make":
        print(json.dumps({"params": make_checkpoint(a, base, adapter)}))
    elif a.child == "compare":
        print(json.dumps(compare(a.work / "out-stream", a.work / "out-peft")))
    elif a.child:
        fn = run_stream if a.child == "stream" else run_peft
        print(json.dumps(fn(base, adapter, a.work / f"out-{a.child}", a.shard_mb)))
    else:
        report(a)


def report(a) -> None:
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    params = child("make", a)["params"]
    shards = len(list((a.work / "base").glob("model-*.safetensors")))
    res = {m: child(m, a) for m in ("stream", "peft")}
    worst, rel = child("compare", a)
    ratio = res["stream"]["peak_mb"] / res["peft"]["peak_mb"]
    print(
        f"checkpoint: {params / 1e6:.0f}M parameters, bf16, {2 * params / 1e9:.2f} GB in {shards} shards of "
        f"<= {a.shard_mb} MB; LoRA r=16 on all 7 projections of {a.layers} layers\n"
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("| merge | peak RSS (MB) | RSS after imports (MB) | time (s) |\n| --- | --- | --- | --- |")
    arms = (("stream", "finetune.ship.merge (streaming)"), ("peft", "peft merge_and_unload + save_pretrained"))
    for m, label in arms:
        r = res[m]
        print(f"| {label} | {r['peak_mb']:.0f} | {r['after_import_mb']:.0f} | {r['seconds']:.1f} |")
    print(
        f"\npeak RSS ratio streaming / peft: {ratio:.3f} (target <= 0.25)\n"
        f"max |streaming - peft| over every tensor: {worst:.3g} ({rel:.3g} of the tensor's max |value|; "
        "both add a float32 B @ A to the bf16 weight and round once)"
    )
    shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
