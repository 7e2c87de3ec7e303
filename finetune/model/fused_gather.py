"""Which projections and adapter tensors one fused call runs with, as `Proj` tuples (finetune/model/fused.py), and
their cache. peft's layers say at every call which adapter is active (DPO switches between the policy and its frozen
"ref" adapter every step, `disable_adapter()` turns them off); `Gather` builds the tuples once per adapter state and
rebuilds them after any module or parameter registration (an adapter added, deleted and re-added, a parameter
replaced by assignment), so a call costs a few attribute reads instead of walking peft's properties.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from finetune.model.fused import Proj


def current(layer: nn.Module) -> tuple[Proj, tuple] | None:
    """(Proj, (A, B) or ()) for this call of one projection, or None when peft's own layer must run it."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer):
        return Proj(layer, None), ()
    if layer.merged:
        return None
    base = layer.get_base_layer()
    names = [] if layer.disable_adapters else [a for a in layer.active_adapters if a in layer.lora_A]
    if not names:
        return Proj(base, None), ()
    if len(names) > 1 or names[0] in layer.lora_variant:
        return None
    a = names[0]
    return Proj(base, layer.scaling[a]), (layer.lora_A[a].weight, layer.lora_B[a].weight)


def gather(*layers: nn.Module) -> tuple[tuple[Proj, ...], tuple] | None:
    """The projections and their adapters' tensors, in order, or None when any must run unfused."""
    projs, ab = [], []
    for layer in layers:
        found = current(layer)
        if found is None:
            return None
        projs.append(found[0])
        ab += found[1]
    return tuple(projs), tuple(ab)


_REGISTRATIONS = [0]  # modules and parameters registered since `watch_registrations` (see there)


def _registered(parent: nn.Module, *_) -> None:
    if not isinstance(parent, nn.ModuleList):  # Llama's forward slices its layer list: a new list, the same layers
        _REGISTRATIONS[0] += 1


@functools.cache
def watch_registrations() -> None:
    """Count module and parameter registrations in this process (torch's global registration hooks): peft adding
    or re-creating an adapter (its ModuleDicts), or a parameter replaced by assignment, changes what `Gather` must
    return. Not counted: modules put into a ModuleList, which transformers' Llama does at every forward
    (`self.layers[:n]` builds a new list of the same layers)."""
    torch.nn.modules.module.register_module_module_registration_hook(_registered)
    torch.nn.modules.module.register_module_parameter_registration_hook(_registered)


def adapter_state(layer: nn.Module) -> tuple:
    """Everything `current` reads that can change without a registration: adapters off, which are active, merged,
    and their scales (peft's set_scale / scale_layer change them in place)."""
    active = layer.active_adapter
    return (
        layer.disable_adapters,
        active if isinstance(active, str) else tuple(active),
        len(layer.merged_adapters),
        tuple(layer.scaling.items()),
    )


class Gather:
    """`gather` over the projections `names` of a fused module (passed at each call), cached per adapter state:
    building the Proj tuples at every call is host time a GPU waits for. tests/unit/test_fused_lora.py checks the
    cache against disable_adapter(), set_adapter() and an adapter deleted and re-created."""

    def __init__(self, names: tuple[str, ...]):
        self.names, self.seen, self.layers, self.found = names, None, (), {}

    def __call__(self, owner: nn.Module):
        from peft.tuners.lora import LoraLayer

        if self.seen != _REGISTRATIONS[0]:
            self.seen, self.found = _REGISTRATIONS[0], {}
            self.layers = tuple((m, isinstance(m, LoraLayer)) for m in (getattr(owner, n) for n in self.names))
        key = tuple(adapter_state(m) if lora else None for m, lora in self.layers)
        if key not in self.found:
            if len(self.found) >= 8:  # a few states in use at a time (policy, reference, adapters off)
                self.found.clear()
            self.found[key] = gather(*(m for m, _ in self.layers))
        return self.found[key]
