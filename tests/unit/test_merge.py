"""The streaming merge against peft's own merge_and_unload, on a small random Llama saved in several shards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from finetune.ship import merge

TARGETS = ["q_proj", "v_proj", "down_proj"]  # a subset: the QLoRA path must still dequantize k/o/gate/up


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(base dir in 4+ shards, adapter dir with random nonzero A and B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=False,
    )
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(root / "base", max_shard_size="100KB")
    pm = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    )
    pm.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def merged_tensors(out_dir):
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(out_dir / shard))
    assert set(tensors) == set(index["weight_map"])
    return tensors


def peft_merged(base_model, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload().state_dict()


def test_streaming_merge_equals_merge_and_unload(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir = checkpoint
    assert len(merge.base_files(base_dir)) >= 4
    stats = merge.merge(base_dir, merge.read_adapter(adapter_dir), tmp_path, max_shard_bytes=150_000)
    assert stats.shards >= 4 and stats.merged == 2 * len(TARGETS) and stats.dequantized == 0
    ours = merged_tensors(tmp_path)
    theirs = peft_merged(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert set(ours) == set(theirs)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst < 1e-6, worst
    changed = [k for k in ours if not torch.equal(ours[k], load_base_tensor(base_dir, k))]
    assert sorted(changed) == sorted(merge.read_adapter(adapter_dir).pairs)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # stock loading of the sharded output
    assert torch.equal(
        reloaded.state_dict()["model.layers.1.mlp.down_proj.weight"], ours["model.layers.1.mlp.down_proj.weight"]
    )


def load_base_tensor(base_dir, name):
    for f in merge.base_files(base_dir):
        tensors = load_file(f)
        if name in tensors:
            return tensors[name]
    raise KeyError(name)


def test_dequantized_merge_reproduces_the_qlora_model(checkpoint, tmp_path):
    """Merge into bitsandbytes' NF4 roundtrip of every projection == dequantize the 4-bit model, then merge;
    and the merged model's logits equal the QLoRA adapter model's."""
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base_dir, adapter_dir = checkpoint
    quant = merge.Quant("nf4", True, torch.float32)
    stats = merge.merge(base_dir, merge.read_adapter(adapter_dir), tmp_path, quant=quant)
    assert stats.dequantized == 2 * 7  # every projection of both layers, targeted or not
    bnb_cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )

    def load_4bit():
        m = AutoModelForCausalLM.from_pretrained(
            base_dir, quantization_config=bnb_cfg, dtype=torch.float32, device_map="cpu"
        )
        for mod in m.modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                mod.support_avx512bf16_for_cpu = False
        return m

    ours = merged_tensors(tmp_path)
    theirs = peft_merged(load_4bit().dequantize(), adapter_dir)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-6

    qlora = PeftModel.from_pretrained(load_4bit(), str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (qlora(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max()
    assert diff < 1e-5, diff


def test_output_dtype_and_config(checkpoint, tmp_path):
    base_dir, adapter_dir = checkpoint
    merge.merge(base_dir, merge.read_adapter(adapter_dir), tmp_path, out_dtype=torch.bfloat16)
    assert {t.dtype for t in merged_tensors(tmp_path).values()} == {torch.bfloat16}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and "quantization_config" not in cfg
    assert (tmp_path / "generation_config.json").is_file()


def test_unsupported_adapters_are_refused(checkpoint, tmp_path):
    import shutil

    _, adapter_dir = checkpoint
    odd = tmp_path / "odd"
    shutil.copytree(adapter_dir, odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    unmergeable = {**cfg, "rank_pattern": {"q": 8}, "init_lora_weights": "pissa"}
    (odd / "adapter_config.json").write_text(json.dumps(unmergeable))
    with pytest.raises(merge.MergeError, match=r"\['rank_pattern', 'init_lora_weights=pissa'\].*merge_and_unload"):
        merge.read_adapter(odd)
    (odd / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))  # DoRA without magnitudes
    with pytest.raises(merge.MergeError, match=r"needs a magnitude for every LoRA weight"):
        merge.read_adapter(odd)


@pytest.fixture(scope="module")
def dora_adapter(checkpoint, tmp_path_factory):
    """A DoRA adapter on the checkpoint's base: random A, B, and magnitudes moved off their initial norms (as
    training moves them), so the merge's row rescaling is exercised."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, _ = checkpoint
    torch.manual_seed(1)
    pm = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, use_dora=True, task_type="CAUSAL_LM"
        ),
    )
    for name, p in pm.named_parameters():
        if "lora_magnitude_vector" in name:
            p.data.mul_(1 + 0.2 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("dora") / "adapter"
    pm.save_pretrained(out)
    return out


def test_dora_streaming_merge_equals_merge_and_unload(checkpoint, dora_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, _ = checkpoint
    lora = merge.read_adapter(dora_adapter)
    assert sorted(lora.magnitudes) == sorted(lora.pairs) and len(lora.pairs) == 2 * len(TARGETS)
    merge.merge(base_dir, lora, tmp_path)
    ours = merged_tensors(tmp_path)
    theirs = peft_merged(AutoModelForCausalLM.from_pretrained(base_dir), dora_adapter)
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst < 1e-6, worst
    plain = merge.Lora(pairs=lora.pairs, scale=lora.scale)  # the same A, B without DoRA's rescaling
    w = "model.layers.0.self_attn.q_proj.weight"
    assert (plain.add_to(w, load_base_tensor(base_dir, w).clone()) - ours[w]).abs().max() > 1e-2


def test_qdora_dequantized_merge_reproduces_the_4bit_dora_model(checkpoint, dora_adapter, tmp_path):
    """QDoRA: the magnitudes' norms are taken over the NF4 roundtrip, as the 4-bit model computes them."""
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base_dir, _ = checkpoint
    merge.merge(base_dir, merge.read_adapter(dora_adapter), tmp_path, quant=merge.Quant("nf4", True, torch.float32))
    bnb_cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    four_bit = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=bnb_cfg, dtype=torch.float32, device_map="cpu"
    )
    for mod in four_bit.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
    qdora = PeftModel.from_pretrained(four_bit, str(dora_adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (qdora(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max()
    assert diff < 1e-5, diff


def test_adapter_for_another_base_is_refused(checkpoint, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, adapter_dir = checkpoint
    other = tmp_path / "one_layer"
    LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
        )
    ).save_pretrained(other)
    with pytest.raises(merge.MergeError, match=r"targets 3 weights the base .* does not have"):
        merge.merge(other, merge.read_adapter(adapter_dir), tmp_path / "out")


def test_parse_size():
    """One size parser for the whole toolkit, one meaning: GB = GiB = 2**30 (as plan.gpu_memory has always read it)."""
    from finetune.config import ConfigError, parse_size

    def shard(text):
        return parse_size(text, "max_shard_size", "", "it like 2GB, 500MB or 1.5GiB")

    assert shard("2GB") == 2 * 2**30 == shard("2GiB")
    assert shard("1.5GiB") == int(1.5 * 2**30)
    assert shard("500mb") == 500 * 2**20
    assert shard("1234") == 1234  # a bare number is bytes
    with pytest.raises(ConfigError, match="max_shard_size=lots: write it like 2GB"):
        shard("lots")


def test_a_replaced_merged_folder_is_whole_old_or_whole_new(tmp_path):
    """files.replace renames the old merged/ aside before the new one takes its name, so a stop between the two
    renames leaves a whole merged.old (cleared by the next export), never a half-deleted merged/."""
    from finetune.runtime import files

    final, new = tmp_path / "merged", tmp_path / "merged.partial"
    final.mkdir()
    (final / "model-00001-of-00002.safetensors").write_text("old")
    (final / "model-00002-of-00002.safetensors").write_text("old")
    new.mkdir()
    (new / "model.safetensors").write_text("new")
    files.replace(new, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert [p.name for p in final.iterdir()] == ["model.safetensors"]

    again = tmp_path / "merged.partial"
    again.mkdir()  # a stop after the first rename: merged.old is the previous folder, whole
    final.rename(final.with_name("merged.old"))
    assert sorted(p.name for p in (tmp_path / "merged.old").iterdir()) == ["model.safetensors"]
    files.replace(again, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
