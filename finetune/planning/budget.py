"""`trainer.memory_budget`: the fastest per-layer checkpointing plan that fits a memory budget, from the planner's
arithmetic alone (no weights load).

Per decoder layer the choice is: keep its activations (fastest), or checkpoint it (recompute in backward, keep only
its input), with the checkpointed inputs either on the GPU or offloaded to pinned CPU memory on a side stream
(model/checkpointing.py). Every layer of a plan has the same sizes, so for each offload setting the plan that keeps
the most layers within the budget is the fastest; of the two, the faster wins (offloading is free while the copies
hide behind compute, and stalls when the link cannot keep up). The kept layers are the last ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.config.methods import METHODS
from finetune.planning import methods, planner
from finetune.planning.planner import GiB, Setup

# Files saved beside the LoRA weights: the tokenizer (tokenizer.json 3.6 MB, tokenizer.model 0.5 MB), its licence,
# configs, RNG and scheduler state, the card; measured on a tiny run: 3.83 MB in a checkpoint, 4.1 MB in adapter/.
CHECKPOINT_FILES = 4.0e6
ADAPTER_FILES = 4.4e6
LINK_BYTES_PER_S = 25e9  # pinned host <-> GPU copies, PCIe Gen4 x16 (Gen5 sustains ~50 GB/s): conservative


@dataclass
class LayerPlan:
    setup: Setup  # the chosen plan as the planner sees it (checkpointing, kept_layers, offload_checkpoints)
    need: float  # bytes the card must hold (the planner's total)
    tokens_per_s: float
    budget: float
    source: str = ""  # where the budget came from, said in the line

    def checkpointed(self) -> list[bool]:
        """Per decoder layer, in order: recompute it in backward."""
        setup = self.setup
        count = setup.layers - setup.kept_layers if setup.checkpointing else 0
        return [i < count for i in range(setup.layers)]

    def line(self) -> str:
        setup, count = self.setup, sum(self.checkpointed())
        where = "offloaded to pinned CPU memory" if setup.offload_checkpoints else "kept on the GPU"
        how = (
            f"{'layer 0' if count == 1 else f'layers 0-{count - 1}'} checkpointed, inputs {where}"
            if count
            else "none checkpointed"
        )
        return (
            f"memory plan: {setup.layers - count} of {setup.layers} layers keep their activations, {how}: "
            f"{self.need / GiB:.2f} of {self.budget / GiB:.2f} GiB ({self.source or 'budget'}), "
            f"~{self.tokens_per_s:,.0f} tokens/s estimated"
        )


def disk_bytes(setup: Setup) -> tuple[float, float]:
    """(one checkpoint, the final adapter) on disk, in bytes: the trained LoRA (and DoRA magnitude) weights in
    float32 with the optimizer's states, the frozen reference copy of the starting adapter that DPO/KTO
    checkpoints also hold, and the files saved beside them."""
    trained = planner.param_counts(setup)["lora"]
    if setup.dora:
        trained += setup.layers * sum(o for _, o in methods.targets(setup).values())
    ref = trained * 4 if METHODS[setup.kind].reference else 0
    return (trained * (4 + planner.optimizer_bytes(setup.optim)) + ref + CHECKPOINT_FILES, trained * 4 + ADAPTER_FILES)


def offload_seconds_per_token(setup: Setup, link: float = LINK_BYTES_PER_S) -> float:
    """Seconds per token the link needs for one direction of the checkpointed inputs' copies."""
    if not (setup.checkpointing and setup.offload_checkpoints):
        return 0.0
    res = 4 if (setup.quant != "none" and setup.upcast_fp32) else setup.dtype_bytes
    return (setup.layers - setup.kept_layers) * res * setup.hidden / link


def speed(setup: Setup, peak_flops: float, utilization: float, link: float = LINK_BYTES_PER_S) -> float:
    """The planner's tokens/s, less the stalls of copies that outlast the compute they hide behind: the device
    -> host copies behind the forward (about a third of the step), host -> device behind the backward."""
    compute_s = 1 / planner.tokens_per_second(setup, peak_flops, utilization)
    copy = offload_seconds_per_token(setup, link)
    return 1 / (compute_s + max(0.0, copy - compute_s / 3) + max(0.0, copy - 2 * compute_s / 3))


def choose(
    setup: Setup, budget: float, peak_flops: float, utilization: float, link: float = LINK_BYTES_PER_S
) -> LayerPlan | None:
    """The fastest plan for `setup` whose planner total fits `budget` bytes (ties: less memory); None if none fits."""
    found = []
    for offload in (False, True):
        for kept in range(setup.layers, -1, -1):
            candidate = setup.but(
                checkpointing=kept < setup.layers,
                kept_layers=kept if kept < setup.layers else 0,
                offload_checkpoints=offload and kept < setup.layers,
                offload_activations=False,
            )
            need = planner.memory(candidate).need
            if need <= budget:
                found.append(LayerPlan(candidate, need, speed(candidate, peak_flops, utilization, link), budget))
                break
    return max(found, key=lambda p: (p.tokens_per_s, -p.need), default=None)
