"""The planner's estimate against every recorded peak: GPU rows from issue 8's measurements, CPU rows measured here.

    .venv/bin/python bench/plan_calibration.py   # 2-10 min on 2 shared CPU cores; prints plan_calibration.md's tables

CPU rows: a small Llama-2-shaped model (float32, the real 32000 vocabulary), peft LoRA r=16 on every linear layer,
AdamW, one warm-up step, then the peak bytes of live tensor storage during a second step (every operator's outputs
tracked until freed, plus parameters and optimizer states): what torch.cuda.max_memory_allocated counts on a GPU.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

from finetune.planning import planner  # noqa: E402
from finetune.planning.planner import GiB, Setup  # noqa: E402

L7 = dict(hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32)
L13 = dict(hidden=5120, ffn=13824, layers=40, heads=40, kv_heads=40)
BENCH = dict(lora_r=16, micro_batch=2, max_length=2048, checkpointing=True, loss_head="hf")  # plain HF
# (model, card, setting, measured peak GiB, measured tokens/s) from issue 8 (transformers 5.17, peft 0.21,
# bitsandbytes 0.50.2, SDPA, r=16 all linear, micro-batch 2 x 2048 random tokens, 2026-11-26)
GPU_ROWS = [
    ("7B", "H100", "QLoRA, checkpointing", L7, dict(quant="nf4"), 8.27, 4896),
    ("7B", "H100", "LoRA bf16, checkpointing", L7, dict(quant="none"), 18.58, 6359),
    ("13B", "H100", "QLoRA, checkpointing", L13, dict(quant="nf4"), 13.11, 3083),
    ("13B", "H100", "LoRA bf16, checkpointing", L13, dict(quant="none"), 34.36, 3839),
    ("7B", "H200", "QLoRA, checkpointing", L7, dict(quant="nf4"), 8.27, 5806),
    ("7B", "H200", "LoRA bf16, checkpointing", L7, dict(quant="none"), 18.58, 6811),
    ("7B", "H200", "QLoRA, no checkpointing", L7, dict(quant="nf4", checkpointing=False), 47.24, 8156),
    (
        "7B",
        "H200",
        "QLoRA, no checkpointing, Liger",
        L7,
        dict(quant="nf4", checkpointing=False, liger=True),
        40.80,
        9455,
    ),
    ("7B", "H200", "QLoRA, checkpointing, Liger", L7, dict(quant="nf4", liger=True), 7.97, 6396),
    (
        "7B",
        "H200",
        "LoRA bf16, no checkpointing, Liger",
        L7,
        dict(quant="none", checkpointing=False, liger=True),
        37.90,
        11866,
    ),
]
CPU_ARCH = dict(hidden=256, ffn=688, layers=4, heads=4, kv_heads=4)


def gpu_table() -> list[str]:
    rows = [
        "| model | card | setting | measured GiB | estimate GiB | error | measured tok/s | estimate tok/s | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, card, label, arch, kw, gib, tps in GPU_ROWS:
        s = Setup(**arch, **{**BENCH, **kw, **({"loss_head": "liger"} if kw.get("liger") else {})})
        est = planner.memory(s).allocated / GiB
        speed = planner.tokens_per_second(s, planner.GPUS[card.lower()][0])
        rows.append(
            f"| {model} | {card} | {label} | {gib:.2f} | {est:.2f} | {(est - gib) / gib:+.1%} | {tps:,} | "
            f"{speed:,.0f} | {(speed - tps) / tps:+.1%} |"
        )
    return rows


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that operators create and are still alive (forward, backward, optimizer)."""

    def __init__(self, alive: list[torch.Tensor]):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in alive:  # parameters and optimizer states: counted once, also when an operator returns a view
            self.track(t)
        self.peak = sum(n for _, n in self.live.values())

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st.nbytes():
            self.live.setdefault(st.data_ptr(), (StorageWeakRef(st), st.nbytes()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def recorded_table(results: Path = ROOT / "bench" / "results") -> list[str]:
    """Every GPU run of bench/train_throughput.py recorded under `results` (random full-length rows, where the
    planner's max_length is every micro-batch's length): plain HF arms and our training path's arms."""
    from hydra import compose, initialize_config_dir

    from finetune import config
    from finetune.planning import report as plan_report

    config.register()
    rows = [
        "| card | run | arm | measured GiB | estimate GiB | error | measured tok/s | estimate tok/s | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results.rglob("throughput.jsonl")):
        for line in path.read_text().splitlines():
            run = json.loads(line)
            card = run["env"]["card"]
            if run.get("data") != "random" or card.startswith("CPU"):
                continue
            args = shlex.split(run["command"].split("train_throughput.py", 1)[1])
            opt = {k: v for k, v in zip(args, args[1:]) if k.startswith("--")}
            gpu = planner.gpu_named(card) or "h100"
            for arm in run["arms"]:
                if arm["peak_alloc_gib"] is None:
                    continue
                ours = arm["arm"].startswith("ours")
                overrides = [
                    f"recipe={run['recipe']}",
                    "lora.r=16",
                    "lora.alpha=16",
                    "lora.dropout=0.0",
                    f"data.max_length={opt.get('--seq-len', 2048)}",
                    f"trainer.micro_batch_size={opt.get('--micro-batch', 2)}",
                ]
                with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                    cfg = plan_report.load(
                        compose(config_name="train", overrides=overrides + (arm["overrides"] if ours else []))
                    )
                s = plan_report.setup(cfg, 1, "ddp")
                if not ours:  # bench/plain_hf.py: transformers' loss, peft's upcast, checkpointing, AdamW, no Liger
                    s = s.but(
                        loss_head="hf",
                        liger=False,
                        upcast_fp32=True,
                        checkpointing=True,
                        packing=False,
                        optim="adamw_torch",
                        offload_activations=False,
                    )
                est = planner.memory(s).allocated / GiB
                tps = planner.tokens_per_second(s, planner.GPUS[gpu][0])
                gib, meas = arm["peak_alloc_gib"], arm["tokens_per_s"]
                rows.append(
                    f"| {card} | {run['title']} | {arm['arm']} | {gib:.2f} | {est:.2f} | "
                    f"{(est - gib) / gib:+.1%} | {meas:,.0f} | {tps:,.0f} | {(tps - meas) / meas:+.1%} |"
                )
    return rows if len(rows) > 2 else ["(no GPU run of bench/train_throughput.py recorded under bench/results yet)"]


def measure_cpu(checkpointing: bool, micro_batch: int, length: int, head: str) -> float:
    """Peak bytes alive during one LoRA training step (after a warm-up step), as a GPU allocator would count them."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    a = CPU_ARCH
    cfg = LlamaConfig(
        hidden_size=a["hidden"],
        intermediate_size=a["ffn"],
        num_hidden_layers=a["layers"],
        num_attention_heads=a["heads"],
        num_key_value_heads=a["kv_heads"],
        vocab_size=32000,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        use_cache=False,
    )
    model = LlamaForCausalLM(cfg)
    if head == "trl":  # what TRL's SFT and DPO trainers add: log-probs through the LM head in tiles
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 32000, (micro_batch, length))

    def step():
        loss = model(input_ids=ids, labels=ids, **({"fused_lm_head": True} if head == "trl" else {})).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    alive = list(model.parameters()) + [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    with LiveBytes(alive) as tracker:
        step()
    return tracker.peak


def cpu_table() -> list[str]:
    rows = [
        "| setting (CPU, float32, hidden 256, 4 layers, vocab 32000, r=16) | measured MiB | estimate MiB | error |",
        "|---|---|---|---|",
    ]
    for gc, mb, length, head in (
        (True, 2, 512, "hf"),
        (False, 2, 512, "hf"),
        (True, 2, 1024, "hf"),
        (False, 2, 1024, "hf"),
        (True, 2, 1024, "trl"),
        (False, 2, 1024, "trl"),
    ):
        measured = measure_cpu(gc, mb, length, head)
        s = Setup(
            **CPU_ARCH, dtype_bytes=4, lora_r=16, micro_batch=mb, max_length=length, checkpointing=gc, loss_head=head
        )
        est = planner.memory(s).allocated
        rows.append(
            f"| {mb} x {length} tokens, checkpointing {'on' if gc else 'off'}, {head} loss "
            f"| {measured / 2**20:.1f} | "
            f"{est / 2**20:.1f} | {(est - measured) / measured:+.1%} |"
        )
    return rows


if __name__ == "__main__":
    print("\n".join(gpu_table()))
    print()
    print("\n".join(recorded_table()))
    print()
    print("\n".join(cpu_table()))
