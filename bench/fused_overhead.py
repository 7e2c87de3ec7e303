"""Host time per call of the fused LoRA path where the GEMMs cost nothing (hidden 64, 16 tokens, CPU, one thread):
the Python and dispatch work around the kernels that, on a GPU, must stay ahead of them.

  python bench/fused_overhead.py                     # this tree's finetune/
  python bench/fused_overhead.py --before 192c752    # the finetune/ package of a git revision, same measurement

One random-init Llama-2 decoder layer (hidden 64, intermediate 192, 4 heads), peft LoRA r=16 on all 7 linears,
float32; 2 x 8 tokens. Per call, forward + backward: the fused attention (q/k/v and o), the fused MLP, the whole
decoder layer, the whole one-layer model (embedding, layer, head: the path training takes), and peft's own layers on
the same weights for reference. Each number is this thread's CPU time (time.thread_time: on one thread the
CPU work of forward and backward runs here, and time other processes take on a shared machine is not counted), the
best of --repeats means over --iters calls, in microseconds; and, exactly, the Python and builtin function calls
one call makes (sys.setprofile), which a loaded machine does not blur.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree(before: str | None) -> str:
    """The folder whose finetune/ package to import: this checkout, or `before`'s exported to a temporary folder."""
    if before is None:
        return str(ROOT)
    out = tempfile.mkdtemp(prefix="fused-overhead-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", before, "finetune"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    return out


def build():
    """(peft model with its own layers, the same model fused, rotary embeddings for 16 positions)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.model import fused_layers

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=128,
    )
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        lora = LoraConfig(r=16, lora_alpha=16, target_modules=list(fused_layers.PROJECTIONS), init_lora_weights=False)
        models.append(get_peft_model(LlamaForCausalLM(cfg), lora))
    line = fused_layers.apply(models[1])
    assert line.startswith("fused LoRA: q/k/v"), line
    x = torch.randn(2, 8, 64)
    rope = models[0].get_base_model().model.rotary_emb(x, torch.arange(8)[None].expand(2, -1))
    return models, rope


def per_call_us(fn, iters: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(iters):
            fn()
        best = min(best, (time.thread_time() - t0) / iters)
    return best * 1e6


def python_calls(fn) -> int:
    """Python and builtin function calls one `fn()` makes (sys.setprofile): the host work, counted exactly."""
    fn()
    n = [0]

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            n[0] += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n[0]


def measure(iters: int, repeats: int) -> dict[str, float]:
    import torch

    from finetune.model import fused_layers

    (plain, fused), rope = build()
    x = torch.randn(2, 8, 64, requires_grad=True)

    def step(module, *args, **kw):
        out = module(x, *args, **kw)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    ids = torch.randint(0, 128, (2, 8))
    found = {}
    for name, model in (("peft", plain), ("fused", fused)):
        layer = fused_layers.decoder_layers(model)[0]
        calls = {
            "attention": lambda layer=layer: step(layer.self_attn, rope),
            "MLP": lambda layer=layer: step(layer.mlp),
            "decoder layer": lambda layer=layer: step(layer, position_embeddings=rope),
            "whole model": lambda model=model: model(input_ids=ids).logits.sum().backward(),
        }
        for what, call in calls.items():
            found[f"{name} {what}"] = (per_call_us(call, iters, repeats), python_calls(call))
    return found


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", help="git revision whose finetune/ package to measure instead of this tree's")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args(argv)
    sys.path.insert(0, tree(a.before))
    import torch

    torch.set_num_threads(1)
    found = measure(a.iters, a.repeats)
    what = a.before or "this tree"
    print(f"finetune/ of {what}; forward + backward, CPU µs per call, best of {a.repeats} x {a.iters}")
    print("| call | peft's own layers: CPU µs | Python calls | fused: CPU µs | Python calls |")
    print("|---|---|---|---|---|")
    for what in ("attention", "MLP", "decoder layer", "whole model"):
        (p_us, p_n), (f_us, f_n) = found["peft " + what], found["fused " + what]
        print(f"| {what} | {p_us:,.0f} | {p_n:,} | {f_us:,.0f} | {f_n:,} |")


if __name__ == "__main__":
    main()
