"""The CPU proxy for the fused path's memory traffic: how many passes over full-size tensors one layer's fused MLP
(tokens x intermediate) and q/k/v projections (tokens x hidden) make, forward and backward, besides the GEMMs.

Every aten op the autograd functions run is logged under a TorchDispatchMode; an op whose output has the full shape
is a pass over a full-size tensor (on a GPU each is one kernel reading and writing ~90 MB at 7B, 2 x 2048 tokens).
GEMMs (mm/addmm/addmm_: the LoRA product and its scale land in their epilogues) are counted apart, views and
allocations not at all. `--before REV` runs the same count on finetune/model/fused.py as of git revision REV
(loaded from `git show`, nothing checked out). `--triton` routes SwiGLU through the Triton kernels run by the
interpreter on CPU tensors (TRITON_INTERPRET=1, set here before triton loads): each kernel launch is one pass.

    python bench/opcount.py                          # this tree, the PyTorch (CPU) SwiGLU
    python bench/opcount.py --triton                 # this tree, SwiGLU as the CUDA path runs it (Triton kernels)
    python bench/opcount.py --before 048bc46         # the fused functions before the kernel work
    python bench/opcount.py --nf4                    # NF4 bases: gate|up and q/k/v each one GEMM
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENS, HIDDEN, FFN, RANK = 64, 256, 688, 16  # FFN: the intermediate size (Llama 2's 11008 / 4096 ratio)
VIEWS = {
    "view",
    "t",
    "transpose",
    "_unsafe_view",
    "split",
    "split_with_sizes",
    "reshape",
    "expand",
    "detach",
    "alias",
    "slice",
    "select",
    "as_strided",
    "permute",
    "unsqueeze",
    "squeeze",
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "set_",
    "lift_fresh",
}
GEMMS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul", "linear", "gemm_4bit", "gemv_4bit"}


def load_fused(before: str | None):
    if before is None:
        from finetune.model import fused

        return fused
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{before}:finetune/model/fused.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "fused_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("fused_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fused_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="git revision whose finetune/model/fused.py to count instead")
    parser.add_argument("--triton", action="store_true", help="SwiGLU through the Triton kernels (interpreter)")
    parser.add_argument("--nf4", action="store_true", help="NF4 bases (bitsandbytes on the CPU) instead of bf16")
    args = parser.parse_args()
    if args.triton:  # before torch and triton load: the interpreter is chosen at import
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["FINETUNE_TRITON"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import torch

    fused = load_fused(args.before)
    takes_inplace = "inplace" in fused.LoraMLP.forward.__code__.co_varnames[:4]
    launches = [0, False]  # launches, inside one
    if args.triton:
        from finetune.model import swiglu_triton

        for name in ("_swiglu_fwd", "_swiglu_bwd"):  # count launches: the interpreter's own tensor ops are not ours
            kernel = getattr(swiglu_triton, name)
            swiglu_triton.__dict__[name] = Launches(kernel, launches)

    torch.manual_seed(0)
    extra = (False,) if takes_inplace else ()

    def proj(in_features, out_features):
        return projection(fused, in_features, out_features, args.nf4)

    (g, ag, bg), (u, au, bu), (d, ad, bd) = proj(HIDDEN, FFN), proj(HIDDEN, FFN), proj(FFN, HIDDEN)
    x = torch.randn(1, TOKENS, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    box = {}
    print(
        f"fused functions: {'git ' + args.before if args.before else 'this tree'}; SwiGLU: "
        f"{'Triton kernels (interpreter)' if args.triton else 'PyTorch ops'}; "
        f"N={TOKENS} H={HIDDEN} I={FFN} r={RANK}, bf16 activations over {'NF4' if args.nf4 else 'bf16'} bases\n"
    )
    print("| pass | full-size elementwise passes | by op | full-size tensors written by GEMMs |\n|---|---|---|---|")
    count(
        "MLP forward (N x I)",
        lambda: box.update(y=fused.LoraMLP.apply(x, (g, u, d), *extra, ag, bg, au, bu, ad, bd)),
        (TOKENS, FFN),
        launches,
    )
    count("MLP backward (N x I)", lambda: box["y"].backward(torch.randn_like(box["y"])), (TOKENS, FFN), launches)
    (q, aq, bq), (k, ak, bk), (v, av, bv) = proj(HIDDEN, HIDDEN), proj(HIDDEN, HIDDEN), proj(HIDDEN, HIDDEN)
    count(
        "q/k/v forward (N x H)",
        lambda: box.update(o=fused.LoraProjections.apply(x, (q, k, v), *extra, aq, bq, ak, bk, av, bv)),
        (TOKENS, HIDDEN),
        launches,
    )
    count(
        "q/k/v backward (N x H)",
        lambda: torch.autograd.backward(box["o"], [torch.randn_like(t) for t in box["o"]]),
        (TOKENS, HIDDEN),
        launches,
    )


def projection(fused, in_features: int, out_features: int, nf4: bool):
    """A frozen bf16 (or NF4) base with its LoRA pair: (fused.Proj, A, B)."""
    import torch
    import torch.nn as nn

    dtype = torch.bfloat16
    lin = nn.Linear(in_features, out_features, bias=False).to(dtype).requires_grad_(False)
    if nf4:
        import bitsandbytes as bnb

        weight = lin.weight
        lin = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=dtype, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(weight.data, requires_grad=False, quant_type="nf4")
        lin = lin.to("cpu")  # quantizes
        lin.weight.quant_state.packing_format_for_cpu = False
    return (
        fused.Proj(lin, 2.0),
        (torch.randn(RANK, in_features) * 0.01).to(dtype).requires_grad_(),
        (torch.randn(out_features, RANK) * 0.01).to(dtype).requires_grad_(),
    )


def op_log(launches: list):
    """A dispatch mode that logs (op name, output shape) of every aten op outside a Triton launch."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.rows = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if launches[1]:
                return out
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    self.rows.append((func.overloadpacket.__name__, tuple(o.shape)))
            return out

    return Log()


def count(label: str, run, full: tuple[int, int], launches: list) -> None:
    """Run `run` under the op log and print one table row: the passes over tensors of shape `full`."""
    launches[0] = 0
    with op_log(launches) as log:
        run()
    # an output of N x (k * cols) (one GEMM over gate|up, or q|k|v) counts as k full-size tensors
    ops = [
        (r[0], r[1][1] // full[1])
        for r in log.rows
        if r[0] not in VIEWS
        and len(r[1]) == 2
        and r[1][0] == full[0]
        and r[1][1] % full[1] == 0
        and r[1][1] // full[1] <= 3
    ]
    gemm = collections.Counter()
    passes = collections.Counter()
    for name, k in ops:
        (gemm if name in GEMMS else passes)[name] += k
    if launches[0]:
        passes["triton kernel"] += launches[0]
    print(f"| {label} | {sum(passes.values())} | {dict(passes) or '-'} | {sum(gemm.values())} |")


class Launches:
    """A Triton kernel that counts its launches (kernel[grid](...)) and marks the time inside one: the
    interpreter copies the arguments to and from the host, which a GPU launch does not."""

    def __init__(self, kernel, counter):
        self.kernel, self.counter = kernel, counter

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counter[0] += 1
            self.counter[1] = True
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                self.counter[1] = False

        return launch


if __name__ == "__main__":
    main()
