"""SwiGLU on CUDA: our Triton kernels (finetune/model/swiglu_triton.py) against Liger's (liger_kernel.ops.swiglu),
forward and backward at the fused MLP's shapes, bf16; the faster one is what the fused MLP should run.

  python bench/swiglu_bench.py                          # 2 x 2048 tokens x 11008 (7B) and 13824 (13B)
  python bench/swiglu_bench.py --cols 11008 --iters 100 --results /tmp/r

Arms, each doing the work the fused MLP (finetune/model/fused.py LoraMLP) needs, on the same bf16 values:
- ours: `forward(g, u)` -> h, then `backward_(dh, g, u)`, in place: h over dh (the down projection's LoRA gradients
  need h), d(gate) over g, d(up) over u; g and u are the two halves of one [N, 2I] gate|up GEMM output.
- liger: `LigerSiLUMulFunction.apply(g, u)` on two contiguous [N, I] tensors (its LigerSwiGLUMLP's layout), backward
  through autograd (its kernel writes d(gate), d(up) over g, u); its backward gives no h, so "+h" adds the forward
  kernel again (recomputing h), the work ours does in one pass.
- liger-gate-up: `swiglu_fused_gate_up_forward(gu)` and `swiglu_fused_gate_up_backward(gu, dh, in_place=True)` on the
  [N, 2I] buffer (our layout, no copies), "+h" as above.
Timing: CUDA events around each call, median over --iters calls after 5 warmup calls; the in-place buffers are
restored from a pristine copy before each call, outside the timed region. Check: every arm's h, d(gate), d(up)
against float32 autograd (max |error| / max |reference|, bf16 tolerance 1.6e-2, the kernel tests' own) and Liger's
against ours. Results appended to <results>/swiglu.md and swiglu.jsonl. Without CUDA it refuses in one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

TOL = 1.6e-2  # bf16, as tests/unit/test_kernels_swiglu.py and tests/gpu/test_kernels_gpu.py hold the kernels


def timed(fn, restore, iters: int) -> float:
    """Median milliseconds of `fn()` between two CUDA events, `restore()` run (untimed) before each call."""
    times = []
    for i in range(iters + 5):
        restore()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def within(errors: dict[str, float]) -> bool:
    return all(e <= TOL for e in errors.values())  # a NaN error fails (max() of a list with NaN would not)


def reference(gu: torch.Tensor, dh: torch.Tensor) -> dict[str, torch.Tensor]:
    """h, d(gate), d(up) by float32 autograd."""
    g, u = (t.float().requires_grad_() for t in gu.chunk(2, dim=1))
    h = torch.nn.functional.silu(g) * u
    h.backward(dh.float())
    return {"h": h.detach(), "d_gate": g.grad, "d_up": u.grad}


def ours(gu0: torch.Tensor, dh0: torch.Tensor, iters: int) -> tuple[dict, dict]:
    from finetune.model import swiglu_triton

    gu, dh = gu0.clone(), dh0.clone()
    g, u = gu.chunk(2, dim=1)

    def restore():
        gu.copy_(gu0)
        dh.copy_(dh0)

    ms = {"forward": timed(lambda: swiglu_triton.forward(g, u), restore, iters)}
    ms["backward"] = timed(lambda: swiglu_triton.backward_(dh, g, u), restore, iters)
    ms["forward + backward"] = ms["forward"] + ms["backward"]
    restore()
    h_fwd = swiglu_triton.forward(g, u)
    h = swiglu_triton.backward_(dh, g, u)
    return ms, {"h": h_fwd, "backward h": h, "d_gate": g, "d_up": u}


def liger_function(gu0: torch.Tensor, dh0: torch.Tensor, iters: int) -> tuple[dict, dict]:
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    g0, u0 = (t.contiguous() for t in gu0.chunk(2, dim=1))
    g, u = g0.clone().requires_grad_(), u0.clone().requires_grad_()
    state = {}

    def restore():
        with torch.no_grad():
            g.copy_(g0)
            u.copy_(u0)
        g.grad = u.grad = None

    def forward():
        state["h"] = LigerSiLUMulFunction.apply(g, u)

    def backward():
        state["h"].backward(dh0)

    ms = {"forward": timed(forward, restore, iters)}
    ms["backward"] = timed(backward, lambda: (restore(), forward()), iters)
    ms["+h (forward again)"] = ms["forward"]
    ms["forward + backward"] = 2 * ms["forward"] + ms["backward"]
    restore()
    forward()
    h = state["h"].detach().clone()
    backward()
    return ms, {"h": h, "d_gate": g.grad, "d_up": u.grad}


def liger_gate_up(gu0: torch.Tensor, dh0: torch.Tensor, iters: int) -> tuple[dict, dict]:
    from liger_kernel.ops.swiglu import swiglu_fused_gate_up_backward, swiglu_fused_gate_up_forward

    gu = gu0.clone()

    def restore():
        gu.copy_(gu0)

    ms = {"forward": timed(lambda: swiglu_fused_gate_up_forward(gu), restore, iters)}
    ms["backward"] = timed(lambda: swiglu_fused_gate_up_backward(gu, dh0, in_place=True), restore, iters)
    ms["+h (forward again)"] = ms["forward"]
    ms["forward + backward"] = 2 * ms["forward"] + ms["backward"]
    restore()
    h = swiglu_fused_gate_up_forward(gu)[1].clone()
    d_gu = swiglu_fused_gate_up_backward(gu, dh0, in_place=True)
    d_gate, d_up = d_gu.chunk(2, dim=1)
    return ms, {"h": h, "d_gate": d_gate, "d_up": d_up}


ARMS = {"ours": ours, "liger": liger_function, "liger-gate-up": liger_gate_up}


def one_shape(tokens: int, cols: int, iters: int, arms: list[str], device: str = "cuda") -> dict:
    gen = torch.Generator(device=device).manual_seed(cols)
    gu = (torch.randn(tokens, 2 * cols, device=device, generator=gen) * 3).to(torch.bfloat16)
    dh = torch.randn(tokens, cols, device=device, generator=gen).to(torch.bfloat16)
    want = reference(gu, dh)
    out, found = {"tokens": tokens, "cols": cols, "arms": {}}, {}
    for name in arms:
        try:
            ms, found[name] = ARMS[name](gu, dh, iters)
        except Exception as exc:  # one arm failing (Liger missing, a kernel error) keeps the others' numbers
            out["arms"][name] = {"failed": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        errors = {k: rel(v, want["h" if k == "backward h" else k]) for k, v in found[name].items()}
        out["arms"][name] = {"ms": ms, "errors vs float32": errors, "ok": within(errors)}
        if name != "ours" and "ours" in found:
            vs = {k: rel(found[name][k], found["ours"][k]) for k in ("h", "d_gate", "d_up")}
            out["arms"][name]["vs ours"] = vs
            out["arms"][name]["ok"] = out["arms"][name]["ok"] and within(vs)
    timed_arms = {k: v["ms"]["forward + backward"] for k, v in out["arms"].items() if "ms" in v and v["ok"]}
    if timed_arms:
        out["faster"] = min(timed_arms, key=timed_arms.get)
        liger = [v for k, v in timed_arms.items() if k != "ours"]
        if "ours" in timed_arms and liger:
            out["ours / best liger"] = timed_arms["ours"] / min(liger)  # < 1: ours is faster
    return out


def table(env: dict, shapes: list[dict], command: str) -> str:
    lines = [
        f"### SwiGLU kernels, bf16: ours vs Liger ({env['date']}, {env['card']})",
        "",
        ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"`{command}`",
        "",
        "| tokens x I | arm | forward ms | backward ms | forward + backward ms (with h) | max rel error | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in shapes:
        for name, r in s["arms"].items():
            if "failed" in r:
                lines.append(f"| {s['tokens']} x {s['cols']} | {name} | | | | | FAILED {r['failed']} |")
                continue
            errs = [*r["errors vs float32"].values(), *r.get("vs ours", {}).values()]
            err = float("nan") if any(e != e for e in errs) else max(errs)
            lines.append(
                f"| {s['tokens']} x {s['cols']} | {name} | {r['ms']['forward']:.3f} | {r['ms']['backward']:.3f} | "
                f"{r['ms']['forward + backward']:.3f} | {err:.1e} | {'pass' if r['ok'] else 'FAIL'} |"
            )
        if "faster" in s:
            ratio = s.get("ours / best liger")
            vs = f"ours / best Liger = {ratio:.2f}" if ratio else ""
            lines.append(f"| {s['tokens']} x {s['cols']} | **faster: {s['faster']}** | | | {vs} | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2 * 2048, help="rows: micro-batch x sequence length")
    p.add_argument("--cols", default="11008,13824", help="intermediate sizes (7B: 11008, 13B: 13824)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("swiglu_bench.py: needs CUDA (torch sees no GPU); run it on the GPU machine", file=sys.stderr)
        return 2
    import perf

    arms = a.arms.split(",")
    if unknown := [x for x in arms if x not in ARMS]:
        p.error(f"unknown arms {unknown}: use {', '.join(ARMS)}")
    shapes = []
    for cols in (int(c) for c in a.cols.split(",")):
        shapes.append(one_shape(a.tokens, cols, a.iters, arms))
        for name, r in shapes[-1]["arms"].items():
            what = r.get("failed") or (
                f"{r['ms']['forward + backward']:.3f} ms forward + backward "
                f"({r['ms']['forward']:.3f} + {r['ms']['backward']:.3f}), {'pass' if r['ok'] else 'FAIL'}"
            )
            print(f"{name}: {a.tokens} x {cols}: {what}", flush=True)
    env = perf.environment()
    command = "python bench/swiglu_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    with (results / "swiglu.jsonl").open("a") as fh:
        fh.write(json.dumps({"env": env, "command": command, "shapes": shapes}) + "\n")
    text = table(env, shapes, command)
    with (results / "swiglu.md").open("a") as fh:
        fh.write(text + "\n")
    print(text, flush=True)
    return 0 if all(r.get("ok") for s in shapes for r in s["arms"].values() if "failed" not in r) else 1


if __name__ == "__main__":
    sys.exit(main())
