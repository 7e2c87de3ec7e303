"""Model cards: Hub metadata that huggingface_hub's ModelCard parses, right for local and Hub bases."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from tests.conftest import compose
from finetune import config
from finetune.runs import card as modelcard

METRICS = [
    {"step": 5, "loss": 2.5, "learning_rate": 2e-4},
    {"step": 10, "loss": 1.75, "eval_loss": 1.9},
    {"step": 10, "train_runtime": 42.0, "train_loss": 2.1},
]


def make_run(tmp_path, *overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config.to_yaml(compose(*overrides)))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    return run


def test_local_copy_of_a_hub_model(tmp_path):
    """model.path is a local folder (peers crash here): metadata names the Hub id the model config points at."""
    run = make_run(tmp_path, "recipe=qlora_13b", "model.path=/models/Llama-2-13b-hf")
    card = ModelCard(modelcard.render(run, "adapter"))
    meta = card.data.to_dict()
    assert meta["base_model"] == "meta-llama/Llama-2-13b-hf"
    assert meta["library_name"] == "peft" and meta["license"] == "llama2"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"qlora", "sft", "peft", "base_model:adapter:meta-llama/Llama-2-13b-hf"} <= set(meta["tags"])
    text = card.text
    assert "loaded from the local copy `.../Llama-2-13b-hf`" in text  # the folder's name, not the author's layout
    assert "LoRA r=64" in text and "4-bit nf4 base with double quantization (QLoRA)" in text
    assert "| final train loss | 1.75 |" in text and "| final eval loss | 1.9 |" in text
    assert "<s>[INST] What is the capital of France? [/INST]" in text
    assert 'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-13b-hf"' in text
    assert "path: .../Llama-2-13b-hf" in text and "/models/" not in text  # the resolved config, no local path


def test_random_tiny_base_has_no_hub_id(tmp_path):
    run = make_run(tmp_path, "recipe=tiny_lora")
    card = ModelCard(modelcard.render(run, "adapter"))
    assert "base_model" not in card.data.to_dict()
    assert not any(t.startswith("base_model:") for t in card.data.tags)
    assert "randomly initialised Llama 2 architecture" in card.text
    assert "none (16-bit LoRA)" in card.text and "lora" in card.data.tags


def test_hub_base_and_hub_dataset(tmp_path):
    run = make_run(tmp_path, "recipe=lora_7b", "data.path=OpenAssistant/oasst1")
    meta = ModelCard(modelcard.render(run, "merged")).data.to_dict()
    assert meta["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert meta["datasets"] == ["OpenAssistant/oasst1"]
    assert meta["library_name"] == "transformers" and "peft" not in meta["tags"]


def test_unknown_local_base(tmp_path):
    run = make_run(
        tmp_path, "recipe=tiny_lora", "model.random_init=false", "model.name=mine", "model.path=/models/my-llama"
    )
    card = ModelCard(modelcard.render(run, "adapter"))
    assert "base_model" not in card.data.to_dict()
    assert "the local checkpoint `.../my-llama` (no Hub id known)" in card.text and "/models/" not in card.text
    assert 'from_pretrained("path/to/my-llama", dtype="auto")' in card.text


def test_config_keeps_tokenizer_path_and_hides_secrets():
    redacted = config.redact(
        {"model": {"tokenizer": "data/llama2-tokenizer"}, "hf_token": "hf_x", "api_key": "k", "max_new_tokens": 16}
    )
    assert redacted == {
        "model": {"tokenizer": "data/llama2-tokenizer"},
        "hf_token": "***",
        "api_key": "***",
        "max_new_tokens": 16,
    }


def loading_code(text: str) -> str:
    return text.split("```python\nfrom peft import PeftModel\n", 1)[1].split("```", 1)[0]


def test_a_qlora_card_loads_the_base_quantized_as_trained(tmp_path):
    """Stock peft on a 16-bit base gives other logits than the 4-bit model the adapter trained against: the card's
    code builds the run's own BitsAndBytesConfig (a LoRA card keeps the plain 16-bit load)."""
    import torch

    from finetune.model import base as model_base

    run = make_run(tmp_path, "recipe=qlora_13b", "model.path=/models/Llama-2-13b-hf")
    cfg = config.load(compose("recipe=qlora_13b"))
    code = loading_code(ModelCard(modelcard.render(run, "adapter")).text)
    quant_expr = code.split("quantization_config=", 1)[1].split(")  # as trained", 1)[0]
    from transformers import BitsAndBytesConfig

    shown = eval(quant_expr, {"torch": torch, "BitsAndBytesConfig": BitsAndBytesConfig})  # noqa: S307
    trained = model_base.bnb_config(cfg.quant, getattr(torch, cfg.model.dtype))
    assert shown.to_dict() == trained.to_dict()
    assert f"dtype=torch.{cfg.model.dtype}," in code and "import torch" in code

    (tmp_path / "lora").mkdir()
    lora = make_run(tmp_path / "lora", "recipe=lora_7b")
    assert "quantization_config" not in loading_code(ModelCard(modelcard.render(lora, "adapter")).text)


def test_a_card_shows_no_absolute_local_path(tmp_path):
    """A published card must not show the author's directory layout: the data file, the base model folder, the
    tokenizer and output_dir appear relative to the run or the checkout, or by their last part."""
    data = tmp_path / "home" / "me" / "private-projects" / "tickets.jsonl"
    run = make_run(
        tmp_path,
        "recipe=tiny_lora",
        "data=jsonl",
        f"data.path={data}",
        f"model.path={tmp_path / 'home' / 'me' / 'models' / 'llama2-tiny'}",
        f"model.tokenizer={config.ROOT / 'data' / 'llama2-tokenizer'}",
        f"output_dir={tmp_path / 'run'}",
    )
    merge = f"\n## Merge\n\nVerified on 2 prompts from the run's data ({data}):\n"
    for kind in ("adapter", "merged", "gguf"):
        text = modelcard.render(run, kind, merge)
        assert str(tmp_path) not in text and "/home/me" not in text and str(config.ROOT) not in text, kind
        assert "`.../tickets.jsonl`" in text and "path: .../tickets.jsonl" in text
        assert "the run's data (.../tickets.jsonl)" in text
        assert "tokenizer: data/llama2-tokenizer" in text and "output_dir: ." in text
