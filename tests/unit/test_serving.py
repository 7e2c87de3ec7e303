"""vLLM's LoRA limits, checked against an adapter's config: the warning export prints, and the command that works."""

from __future__ import annotations

import json

import pytest

from finetune.ship import serving


def adapter(tmp_path, **cfg):
    base = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps({**base, **cfg}))
    return tmp_path


@pytest.mark.parametrize("r, flag", [(8, None), (16, None), (17, 32), (64, 64), (300, 320), (512, 512)])
def test_rank_within_vllms_limits(tmp_path, r, flag):
    a = adapter(tmp_path, r=r)
    warnings = serving.adapter_warnings(a)
    command = serving.vllm_command("meta-llama/Llama-2-7b-hf", a, "run")
    if flag is None:
        assert warnings == [] and "--max-lora-rank" not in command
    else:
        assert warnings == [
            f"LoRA rank {r} is above vLLM's default --max-lora-rank 16: start vLLM with --max-lora-rank {flag}"
        ]
        assert command.endswith(f"--max-lora-rank {flag}")


def test_what_vllm_cannot_serve_says_to_serve_merged(tmp_path):
    a = adapter(
        tmp_path,
        r=1024,
        use_dora=True,
        modules_to_save=["lm_head"],
        target_modules=["q_proj", "embed_tokens"],
        rank_pattern={"q_proj": 8},
    )
    found = "\n".join(serving.adapter_warnings(a))
    assert "LoRA rank 1024 is above vLLM's largest --max-lora-rank (512)" in found
    assert "DoRA" in found and "modules_to_save" in found and "['embed_tokens']" in found
    assert found.count("serve merged/ instead") == 4
