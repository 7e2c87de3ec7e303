"""chat.py's other modes, as the README states them: `merged=true` loads merged/ (from export.py) instead of the
base + adapter; greedy is the default (the same prompt, the same answer); `generate.do_sample=true` samples."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_entry

pytestmark = pytest.mark.slow
SAME = {"prompt": "Name a colour."}
PROMPTS = [SAME, SAME, SAME, {"prompt": "What is the capital of France?", "system": "Be brief."}]


def answers(run, tmp_path, name: str, *overrides: str):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / f"{name}.jsonl"
    proc = run_entry(
        "chat.py",
        f"run={run}",
        f"prompts={prompts}",
        f"out={out}",
        "generate.max_new_tokens=8",
        "batch_size=4",
        *overrides,
    )
    return proc.stdout, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def greedy(tiny_lora_merged, tmp_path_factory):
    """The adapter model's greedy answers (base + adapter/)."""
    return answers(tiny_lora_merged, tmp_path_factory.mktemp("chat"), "greedy")


def test_merged_true_answers_from_merged(tiny_lora_merged, greedy, tmp_path):
    """`merged=true` must answer from merged/, not from the base + adapter. The tiny adapter hardly moves the random
    model's greedy answers, so merged/ is made different here (its output rows rolled by one token id): chat.py's
    answers must then be exactly what stock transformers generates from that folder, and differ from the adapter's."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from finetune.data.chat_format import EOS_ID
    from finetune.runs import rundir
    from finetune.ship import loading

    out, adapter = greedy
    assert "base + adapter, quant=none" in out
    run = tmp_path / "run"
    shutil.copytree(tiny_lora_merged, run)
    index = json.loads((run / "merged" / "model.safetensors.index.json").read_text())
    shard = run / "merged" / index["weight_map"]["lm_head.weight"]
    tensors = load_file(shard)
    tensors["lm_head.weight"] = torch.roll(tensors["lm_head.weight"], 1, dims=0).contiguous()
    save_file(tensors, shard, metadata={"format": "pt"})

    out, merged = answers(run, tmp_path, "merged", "merged=true")
    assert "merged weights" in out
    assert [a["prompt_ids"] for a in merged] == [a["prompt_ids"] for a in adapter]
    sp = loading.load_tokenizer(run, rundir.run_config(run)).sp
    stock = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    for a in merged:
        ids = torch.tensor([a["prompt_ids"]])
        with torch.no_grad():
            new = stock.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=EOS_ID,
            )[0, ids.shape[1] :].tolist()
        new = new[: new.index(EOS_ID)] if EOS_ID in new else new
        assert (a["answer"], a["new_tokens"]) == (sp.decode(new), len(new))
    assert [a["answer"] for a in merged] != [a["answer"] for a in adapter]


def test_greedy_by_default_and_do_sample_samples(tiny_lora_merged, greedy, tmp_path):
    _, det = greedy
    assert det[0]["answer"] == det[1]["answer"] == det[2]["answer"]  # greedy: the same prompt, the same answer
    _, sampled = answers(
        tiny_lora_merged,
        tmp_path,
        "sampled",
        "generate.do_sample=true",
        "generate.temperature=0.7",
        "generate.top_p=0.9",
    )
    assert [a["prompt_ids"] for a in sampled] == [a["prompt_ids"] for a in det]
    same_prompt = [a["answer"] for a in sampled[:3]]
    assert len(set(same_prompt)) > 1, same_prompt  # each row draws its own tokens
    assert any(s["answer"] != g["answer"] for s, g in zip(sampled, det))
