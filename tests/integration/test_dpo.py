"""DPO through the real entry point on the tiny model: SFT -> DPO under accelerate launch (QLoRA), the
reference log-prob cache, and a learnable toy preference (16-bit LoRA)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import compose, run_entry
from finetune import config
from finetune.model import base as model_base
from finetune.runs import metrics

pytestmark = pytest.mark.slow

# Orca prompts carry a long system prompt: 160 prompt tokens keep most pairs, answers are cut to fit 192.
ORCA = [
    "data.max_samples=24",
    "data.max_length=192",
    "data.max_prompt_length=160",
    "data.too_long=truncate",
    "data.eval_fraction=0.25",
    "trainer.micro_batch_size=2",
    "trainer.logging_steps=1",
    "trainer.save_steps=2",
    "eval.samples=0",
]
REWARDS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """A fresh $FINETUNE_CACHE for these runs, so the first one really computes the reference log-probs."""
    return {"FINETUNE_CACHE": str(tmp_path_factory.mktemp("dpo_cache"))}


@pytest.fixture(scope="module")
def sft_dpo(tiny_sft_run, tmp_path_factory, cache):
    """DPO from the tiny QLoRA SFT adapter, reference log-probs precomputed, through accelerate launch."""
    out = tmp_path_factory.mktemp("runs") / "sft_dpo"
    proc = run_entry(
        "train.py",
        "recipe=tiny_dpo",
        f"init_adapter={tiny_sft_run / 'adapter'}",
        "trainer.precompute_ref=true",
        "trainer.max_steps=2",
        f"output_dir={out}",
        *ORCA,
        launcher="accelerate",
        env=cache,
    )
    return out, proc


def cache_dir(proc) -> Path:
    return Path(re.search(r"reference log-probs: .* in (\S+)", proc.stdout).group(1))


def test_sft_to_dpo_starts_at_ln2_and_logs_rewards(sft_dpo):
    out, proc = sft_dpo
    rows = metrics.read(out / "metrics.jsonl")
    first = next(r for r in rows if "loss" in r)
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=2e-3)  # policy = reference
    assert first["rewards/margins"] == pytest.approx(0.0, abs=0.02)
    train_keys = set().union(*(r.keys() for r in rows if "loss" in r))
    eval_keys = set().union(*(r.keys() for r in rows if "eval_loss" in r))
    assert set(REWARDS) <= train_keys and {f"eval_{k}" for k in REWARDS} <= eval_keys
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    assert not (out / "adapter" / "ref").exists(), "TRL's frozen reference adapter must not ship in adapter/"
    assert "reference log-probs: computed and cached in" in proc.stdout


def test_reference_is_the_sft_policy_not_the_base(sft_dpo, tiny_sft_run):
    """The cached reference log-probs equal base + SFT adapter's, computed here with stock peft."""
    from datasets import Dataset
    from peft import PeftModel

    from finetune.data import build

    out, proc = sft_dpo
    pairs = build.read(cache_dir(proc).parent.parent)[0]  # the cached pairs in training order
    tables = [Dataset.from_file(str(f)) for f in cache_dir(proc).glob("cache-*.arrow")]
    # train and eval pairs share one Arrow source, so the eval split's table sits beside the train split's
    [table] = [t for t in tables if "ref_chosen_logps" in t.column_names and len(t) == len(pairs)]
    cfg = config.load(compose("recipe=tiny_dpo", f"model.path={config_of(out)['model']['path']}"))
    sft = PeftModel.from_pretrained(model_base.load_base(cfg.model, cfg.quant), str(tiny_sft_run / "adapter")).eval()

    def logps(ids_of):
        with torch.no_grad():
            return torch.tensor([answer_logp(sft, row["llama_prompt_ids"], row[ids_of]) for row in pairs])

    want = torch.tensor(table["ref_chosen_logps"])
    assert torch.allclose(logps("llama_chosen_ids"), want, rtol=1e-4, atol=1e-2)
    assert torch.allclose(logps("llama_rejected_ids"), torch.tensor(table["ref_rejected_logps"]), rtol=1e-4, atol=1e-2)
    with sft.disable_adapter():
        base = logps("llama_chosen_ids")
    assert (base - want).abs().max() > 1.0  # the raw base scores these answers differently


def test_second_run_reuses_the_cached_reference(sft_dpo, tiny_sft_run, tmp_path, cache):
    _, first = sft_dpo
    before = sorted(p.name for p in cache_dir(first).iterdir())
    proc = run_entry(
        "train.py",
        "recipe=tiny_dpo",
        f"init_adapter={tiny_sft_run / 'adapter'}",
        "trainer.precompute_ref=true",
        "trainer.max_steps=1",
        f"output_dir={tmp_path / 'again'}",
        *ORCA,
        env=cache,
    )
    assert f"reference log-probs: reused from the cache in {cache_dir(first)}" in proc.stdout
    assert "Computing reference log probs" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in cache_dir(first).iterdir()) == before


@pytest.fixture(scope="module")
def toy_preference(tmp_path_factory) -> tuple[Path, Path]:
    """(the toy pair file, the run): fixed answers to varied prompts, 16-bit LoRA DPO for 12 steps."""
    tmp = tmp_path_factory.mktemp("toy_dpo")
    topics = ["rivers", "bread", "chess", "clouds", "violins", "maps", "owls", "glass", "tides", "salt"]
    lines = [
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": f"Tell me about {t}, please ({i})."}]},
                "preferred_output": [{"role": "assistant", "content": "Gladly: here is a short note."}],
                "non_preferred_output": [{"role": "assistant", "content": "No. Ask someone else."}],
            }
        )
        for i in range(4)
        for t in topics
    ]
    (tmp / "toy.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp / "run"
    run_entry(
        "train.py",
        "recipe=tiny_dpo",
        "quant=none",
        f"data.path={tmp / 'toy.jsonl'}",
        "data.eval_fraction=0.2",
        "trainer.max_steps=12",
        "trainer.logging_steps=1",
        "trainer.save_steps=12",
        "trainer.micro_batch_size=4",
        "eval.samples=0",
        f"output_dir={out}",
    )
    return tmp / "toy.jsonl", out


def test_lora_learns_a_toy_preference(toy_preference):
    """Fixed answers to varied prompts: reward accuracy and margin rise, on held-out prompts too."""
    _, out = toy_preference
    rows = [r for r in metrics.read(out / "metrics.jsonl") if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and rows[0]["rewards/margins"] == 0.0
    assert rows[0]["rewards/accuracies"] == 0.0  # equal rewards: no pair is ranked right yet
    margins = [r["rewards/margins"] for r in rows]
    assert all(r["rewards/accuracies"] >= 0.9 for r in rows[-3:])
    assert margins[-1] > margins[len(margins) // 2] > margins[1] > 0 and margins[-1] > 0.3
    final_eval = [r for r in metrics.read(out / "metrics.jsonl") if "eval_loss" in r][-1]
    assert final_eval["eval_rewards/accuracies"] == 1.0 and final_eval["eval_rewards/margins"] > 0.3
    assert final_eval["eval_loss"] < math.log(2) - 0.1  # held-out prompts: the preference generalises


def test_after_dpo_the_model_prefers_the_answer_the_source_data_prefers(toy_preference):
    """Read from the pair file itself (`preferred_output` vs `non_preferred_output`), not from our examples: on every
    prompt, held-out ones included, the trained model moved log p(preferred) - log p(non-preferred) up from the
    base it started from (the reference), by what the run logged as its reward margin (beta x that gain). A
    pipeline that swapped the answers would train the model the other way and still log rising reward margins."""
    from finetune.data import chat_format
    from finetune.runs import rundir
    from finetune.ship import loading

    path, out = toy_preference
    records = [json.loads(line) for line in path.read_text().splitlines()]
    train_cfg = rundir.run_config(out)
    tokenizer = loading.load_tokenizer(out, train_cfg)
    model = loading.add_adapter(loading.load_base(out, train_cfg, tokenizer, None), out)

    def preference(net, record) -> float:
        prompt = chat_format.encode_prompt(tokenizer.sp, record["input"]["messages"])
        logp = {}
        for side in ("preferred_output", "non_preferred_output"):
            ids, _ = chat_format.encode_dialog(tokenizer.sp, record["input"]["messages"] + record[side][-1:])
            assert ids[: len(prompt)] == prompt
            logp[side] = answer_logp(net, prompt, ids[len(prompt) :])
        return logp["preferred_output"] - logp["non_preferred_output"]

    with torch.no_grad():
        trained = torch.tensor([preference(model, r) for r in records])
        with model.disable_adapter():
            base = torch.tensor([preference(model, r) for r in records])
    gain = trained - base  # DPO's implicit reward margin / beta, per prompt
    beta = train_cfg.trainer.beta
    final = [r for r in metrics.read(out / "metrics.jsonl") if "eval_loss" in r][-1]
    print(f"log-prob preference gain over the base: min {gain.min():.3f}, mean {gain.mean():.3f}")
    assert (gain > 0).all(), f"{int((gain <= 0).sum())} of {len(records)} prompts moved toward the non-preferred answer"
    assert gain.mean() * beta == pytest.approx(final["eval_rewards/margins"], rel=0.25)  # what the run logged


def test_conversations_for_dpo_stop_before_any_weight_loads(tmp_path):
    proc = run_entry("train.py", "recipe=tiny_dpo", "data=oasst", f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert "error: data=oasst (adapter oasst) gives ['messages'], not preference pairs" in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()


def config_of(run: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))


def answer_logp(net, prompt: list[int], answer: list[int]) -> float:
    """Sum of log p(answer token | everything before it)."""
    ids = torch.tensor([prompt + answer])
    logp = torch.log_softmax(net(input_ids=ids).logits[0, :-1].float(), -1)
    token_logp = logp.gather(1, ids[0, 1:, None])[:, 0]
    return token_logp[len(prompt) - 1 :].sum().item()
