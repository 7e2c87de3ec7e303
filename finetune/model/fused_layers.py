"""`trainer.fused_lora`: Llama's attention and MLP module instances, in a loaded peft model, replaced by ones that run
the fused LoRA functions (finetune/model/fused.py). No library class or function is patched.

The replacements hold the very same peft LoRA layers as children under the same names (q_proj, ..., down_proj),
so parameter names, adapter saving and loading, `disable_adapter()` and adapter switching (DPO's frozen "ref"
adapter) are peft's own. Which adapter is active is read at every call (`Gather`: the projections and adapter
tensors for each adapter state are built once and reused); whatever the fused functions do not cover at that moment
(several active adapters, a merged adapter) runs peft's own layers. What they never cover (LoRA
dropout, DoRA and other variants, LoRA bias, 8-bit bases, another architecture, FSDP) is found before anything
is replaced, and `apply` says why in one line and changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from finetune.model.checkpointing import recomputing
from finetune.model.fused import LoraMLP, LoraProjections, is_4bit
from finetune.model.fused_gather import Gather, watch_registrations

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@torch.compiler.disable  # runs eagerly inside a compiled layer: the functions reuse one weight buffer in place
def run_fused(function, x, owner: nn.Module, projections: Gather, owns_input: bool):
    """`function.apply` (LoraProjections or LoraMLP) on x with the projections and adapters `projections` finds on
    `owner`, or None when peft's own layers must run them; dX may overwrite x only when `owns_input` and our own
    offloaded checkpointing is recomputing this layer (x is then a tensor of that private recompute, a norm's output
    that nothing else saved)."""
    found = projections(owner)
    if found is None:
        return None
    return function.apply(x, found[0], owns_input and recomputing(), *found[1])


class FusedLlamaAttention(nn.Module):
    """LlamaAttention with q/k/v in one fused function (one read of the shared input) and a fused o_proj."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        for name in (
            "config",
            "layer_idx",
            "head_dim",
            "num_key_value_groups",
            "scaling",
            "attention_dropout",
            "is_causal",
        ):
            setattr(self, name, getattr(attn, name))
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.qkv, self.o = Gather(("q_proj", "k_proj", "v_proj")), Gather(("o_proj",))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        from transformers.models.llama import modeling_llama as hf  # module attributes: Liger's RoPE applies too

        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        qkv = run_fused(LoraProjections, hidden_states, self, self.qkv, owns_input=True)
        q, k, v = qkv or (self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states))
        q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        q, k = hf.apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
        attention = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, hf.eager_attention_forward
        )
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
        o = run_fused(LoraProjections, out, self, self.o, owns_input=False)  # its input may alias what the attention
        return (self.o_proj(out) if o is None else o[0]), weights  # kernel saved: dX never overwrites it


class FusedLlamaMLP(nn.Module):
    """LlamaMLP (SwiGLU) as one fused function over gate, up and down."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.config, self.hidden_size, self.intermediate_size = mlp.config, mlp.hidden_size, mlp.intermediate_size
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        # from the config, not mlp.act_fn: Liger's kernel patch swaps Llama's MLP class for one without act_fn
        self.act_fn = ACT2FN[mlp.config.hidden_act]  # why_not() allowed SiLU only
        self.projections = Gather(("gate_proj", "up_proj", "down_proj"))

    def forward(self, x):
        out = run_fused(LoraMLP, x, self, self.projections, owns_input=True)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) if out is None else out


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    return list(getattr(inner, "layers", []))


def why_not(model: nn.Module) -> str | None:
    """Why the fused path cannot run on this model, naming the key to change; None when it can."""
    from peft.tuners.lora import LoraLayer
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

    from finetune.runtime.dist import launched_sharding

    if launched_sharding() == "fsdp":
        return "FSDP shards the base weights the fused functions read (not checked yet); run without FSDP"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) != "llama" or not decoder_layers(model):
        return f"model type {getattr(config, 'model_type', type(model).__name__)!r} is not Llama"
    if config.hidden_act != "silu" or config.attention_bias or config.mlp_bias:
        return "this Llama has biases or an activation other than SiLU"
    found = 0
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        if isinstance(attn, FusedLlamaAttention) or isinstance(mlp, FusedLlamaMLP):
            return "already fused"
        if not isinstance(attn, LlamaAttention) or not isinstance(mlp, LlamaMLP):
            return f"layers hold {type(attn).__name__}/{type(mlp).__name__}, not Llama's attention and MLP"
        for name in PROJECTIONS:
            module = getattr(attn if name in PROJECTIONS[:4] else mlp, name)
            if isinstance(module, LoraLayer):
                found += 1
                if problem := lora_problem(module):
                    return problem
                module = module.get_base_layer()
            if not (isinstance(module, nn.Linear) or is_4bit(module)) or module.bias is not None:
                return (
                    f"{name} is a {type(module).__name__} (8-bit or biased bases are not covered; quant.mode=nf4 "
                    "or none)"
                )
    return None if found else "the model has no LoRA layers"


def lora_problem(layer) -> str | None:
    for a in layer.lora_A:
        if not isinstance(layer.lora_dropout[a], nn.Identity):
            return (
                f"lora.dropout={layer.lora_dropout[a].p} > 0 (the fused functions keep no dropout mask); "
                "set lora.dropout=0 to fuse"
            )
        if a in layer.lora_variant or layer.lora_bias.get(a):
            return (
                "DoRA (lora.use_dora=true), other LoRA variants and LoRA bias are not covered; set "
                "lora.use_dora=false to fuse"
            )
        if getattr(layer, "fan_in_fan_out", False):
            return "fan_in_fan_out LoRA layers are not covered"
    weight = getattr(layer.get_base_layer(), "weight", None)
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        return "bitsandbytes repacked this 4-bit weight for CPU inference (see model.base.disable_cpu_weight_repacking)"
    return None


def apply(model: nn.Module) -> str:
    """Replace every decoder layer's attention and MLP in `model` (a PeftModel over Llama) with fused ones, in
    place; returns the one line to print: what was fused, or why nothing was."""
    if reason := why_not(model):
        return f"fused LoRA: off ({reason}); training runs peft's own layers"
    layers = decoder_layers(model)
    watch_registrations()
    for layer in layers:
        restore_quant_states(layer)
        layer.self_attn = FusedLlamaAttention(layer.self_attn)
        layer.mlp = FusedLlamaMLP(layer.mlp)
    base = layers[0].mlp.gate_proj
    kind = "4-bit" if is_4bit(getattr(base, "base_layer", base)) else "16-bit"
    return f"fused LoRA: q/k/v, o and SwiGLU MLP of {len(layers)} layers over the {kind} base"


def restore_quant_states(layer: nn.Module) -> None:
    """bitsandbytes' own repair of a 4-bit weight that lost its quant_state, once here rather than per call."""
    for name in PROJECTIONS:
        module = getattr(layer.self_attn if name in PROJECTIONS[:4] else layer.mlp, name)
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if is_4bit(base):
            from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

            fix_4bit_weight_quant_state_from_module(base)


def fused(model: nn.Module) -> bool:
    """Whether `apply` replaced this model's layers."""
    return any(isinstance(layer.mlp, FusedLlamaMLP) for layer in decoder_layers(model))
