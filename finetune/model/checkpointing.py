"""Per-layer activation checkpointing, with the checkpointed layer inputs offloaded to pinned CPU memory.

`apply(model, checkpointed, offload)` sets each decoder layer's own checkpointing switch and function (the
attributes transformers' `GradientCheckpointingLayer` reads: `gradient_checkpointing`, `_gradient_checkpointing_func`)
on the loaded model's instances; no library code is patched. The plan comes from planning/budget.py
(`trainer.memory_budget`). Layers not checkpointed keep their activations; checkpointed ones keep only their input:
on the GPU (torch's non-reentrant checkpoint), or, offloaded, copied to pinned host memory on a side stream while the
next layers compute and copied back, one layer ahead, during backward (`OffloadedCheckpoint`).

On a CPU the "offloaded" input is a host copy: the same code path and gradients, nothing to save.

The recompute restores the forward's RNG state only when the layer draws random numbers (a dropout with p > 0 in
training mode, LoRA dropout included); otherwise it saves and forks nothing. While it runs, `recomputing()` is
true: the fused LoRA functions then write input gradients over their inputs, which belong to this recompute alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
from torch.utils.checkpoint import checkpoint


class HostCopy:
    """One layer input in pinned host memory: copied out on a side stream, back on the side stream when
    prefetched (else on the compute stream), and handed to the compute stream after an event."""

    def __init__(self, t: torch.Tensor, stream: torch.cuda.Stream | None):
        self.device, self.stream, self.back = t.device, stream, None
        if stream is None:  # CPU: a copy, so the autograd graph holds no reference to the layer's input
            self.host = t.detach().clone()
            return
        self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            self.host.copy_(t.detach(), non_blocking=True)
            self.out_done = torch.cuda.Event()
            self.out_done.record(stream)
        t.record_stream(stream)  # the allocator keeps t's memory until the copy has read it

    def prefetch(self) -> None:
        if self.stream is None or self.back is not None:
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.out_done)
            self.back = self.host.to(self.device, non_blocking=True)
            self.in_done = torch.cuda.Event()
            self.in_done.record(self.stream)

    def take(self) -> torch.Tensor:
        if self.stream is None:
            return self.host
        self.prefetch()
        current = torch.cuda.current_stream(self.device)
        current.wait_event(self.in_done)
        self.back.record_stream(current)
        t, self.back, self.host = self.back, None, None
        return t


class Offloader:
    """The host copies of one model's checkpointed inputs in forward order; backward takes them in reverse and
    prefetches the one before."""

    def __init__(self):
        self.copies: list[HostCopy] = []
        self.stream = None

    def put(self, t: torch.Tensor) -> HostCopy:
        if t.device.type == "cuda" and self.stream is None:
            self.stream = torch.cuda.Stream(t.device)
        copy = HostCopy(t, self.stream if t.device.type == "cuda" else None)
        self.copies.append(copy)
        return copy

    def take(self, copy: HostCopy) -> torch.Tensor:
        i = next((k for k, c in enumerate(self.copies) if c is copy), None)
        if i is not None:
            del self.copies[i:]  # later ones were taken already (backward runs in reverse)
            if i > 0:
                self.copies[i - 1].prefetch()
        return copy.take()


_RECOMPUTING = contextvars.ContextVar("finetune_offloaded_recompute", default=False)


def recomputing() -> bool:
    """Whether this forward is OffloadedCheckpoint's recompute (its tensors are private to that backward)."""
    return _RECOMPUTING.get()


@contextlib.contextmanager
def _recompute():
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


def draws_random(layer: torch.nn.Module) -> bool:
    """Whether a forward of `layer` now would draw random numbers (dropout with p > 0 in training mode)."""
    if not layer.training:
        return False
    attn = getattr(layer, "self_attn", None)
    if float(getattr(attn, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and m.training for m in layer.modules())


class OffloadedCheckpoint(torch.autograd.Function):
    """`apply(run, offloader, rng, hidden, *params)`: run(hidden) without saving anything but a host copy of `hidden`;
    backward copies it back, recomputes run(hidden) with the forward's autocast state (and RNG state when `rng`),
    and returns the gradients of `hidden` and of the layer's trainable `params` (inputs here, so layer 0's output
    needs grad even when the embeddings are frozen)."""

    @staticmethod
    def forward(ctx, run, offloader, rng, hidden, *params):
        dev = hidden.device.type
        ctx.run, ctx.offloader, ctx.params, ctx.dev, ctx.rng = run, offloader, params, dev, rng
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        if rng:
            ctx.cpu_rng = torch.get_rng_state()
            ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if dev == "cuda" else None
        with torch.no_grad():
            out = run(hidden)
        ctx.copy = offloader.put(hidden)
        return out

    @staticmethod
    def backward(ctx, dout):
        hidden = ctx.offloader.take(ctx.copy).detach().requires_grad_(ctx.needs_input_grad[3])
        with contextlib.ExitStack() as stack:
            if ctx.rng:
                stack.enter_context(torch.random.fork_rng(devices=[hidden.device] if ctx.dev == "cuda" else []))
                torch.set_rng_state(ctx.cpu_rng)
                if ctx.cuda_rng is not None:
                    torch.cuda.set_rng_state(ctx.cuda_rng, hidden.device)
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autocast(ctx.dev, enabled=ctx.autocast[0], dtype=ctx.autocast[1]))
            stack.enter_context(_recompute())
            out = ctx.run(hidden)
        wrt = ([hidden] if hidden.requires_grad else []) + [p for p in ctx.params if p.requires_grad]
        grads = list(torch.autograd.grad(out, wrt, dout, allow_unused=True))
        d_hidden = grads.pop(0) if hidden.requires_grad else None
        d_params = [grads.pop(0) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, d_hidden, *d_params)


def offloaded_checkpoint(function, hidden, *args, layer, offloader):
    """A `_gradient_checkpointing_func`: `function(hidden)` checkpointed with its input offloaded."""
    if args:  # transformers passes the hidden states alone positionally; anything else: torch's checkpoint
        return checkpoint(function, hidden, *args, use_reentrant=False)
    params = tuple(p for p in layer.parameters() if p.requires_grad)
    return OffloadedCheckpoint.apply(function, offloader, draws_random(layer), hidden, *params)


def decoder_layers(model) -> list:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.model.layers)


def apply(model, checkpointed: list[bool], offload: bool) -> None:
    """Checkpoint exactly the decoder layers marked in `checkpointed` (inputs offloaded when `offload`); the others
    keep their activations. Train with TrainingArguments.gradient_checkpointing off, so the Trainer leaves it."""
    layers = decoder_layers(model)
    if len(layers) != len(checkpointed):
        raise ValueError(f"a plan for {len(checkpointed)} layers does not fit a model of {len(layers)}")
    offloader = Offloader()
    for layer, on in zip(layers, checkpointed):
        layer.gradient_checkpointing = on
        layer._gradient_checkpointing_func = (
            functools.partial(offloaded_checkpoint, layer=layer, offloader=offloader)
            if offload
            else functools.partial(checkpoint, use_reentrant=False)
        )


def check(cfg) -> list[str]:
    """Problems with `trainer.memory_budget`, found before any weight loads."""
    t = cfg.trainer
    if t.memory_budget is None:
        return []
    found = []
    if str(t.memory_budget).lower() == "auto":
        if not torch.cuda.is_available():
            found.append(
                "trainer.memory_budget=auto reads the GPU's free memory and there is no GPU; give a size "
                "like 40GB (the plan is then made for plan.gpu) or leave it unset"
            )
    else:
        from finetune.config import ConfigError, parse_size

        try:
            parse_size(t.memory_budget, "trainer.memory_budget", "G", "a size like 40GB, or auto")
        except ConfigError as exc:
            found += exc.problems
    if t.gradient_checkpointing is False:
        found.append(
            "trainer.memory_budget plans which layers to checkpoint; with "
            "trainer.gradient_checkpointing=false set one of them, not both"
        )
    if t.activation_offloading:
        found.append(
            "trainer.memory_budget offloads checkpointed inputs itself; set trainer.activation_offloading=false"
        )
    return found
