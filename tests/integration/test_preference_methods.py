"""ORPO, SimPO and KTO on the tiny model (QLoRA), in process through the same stages train.py runs (checks, data
stage, trainer registry, checkpoints.save), on a toy preference a few steps can learn (fixed good and bad answers
to varied prompts).

Each trainer: the loss before training is what the method's formula gives, computed here from log-probabilities
of our own (KTO: 0.5, the policy is its reference); the loss falls; every LoRA tensor changes; stock peft reloads
the saved adapter and reproduces the log-probabilities TRL logged on the held-out batch (so the ids TRL scored
are our Meta-exact ones, and the adapter is the trained model). ORPO and SimPO run one forward per step and no
reference; KTO runs its reference and KL passes through a frozen "ref" adapter.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import compose
from finetune.data import load as data_load
from finetune.model import base as model_base
from finetune.model import lora
from finetune.model import tokenizer as tokenizer_mod
from finetune.runs import checkpoints, metrics, rundir
from finetune.training import checks, kinds

pytestmark = pytest.mark.slow

TOPICS = ["rivers", "bread", "chess", "clouds", "violins", "maps", "owls", "glass", "tides", "salt"]
GOOD, BAD = "Gladly: here is a short note on {}.", "No. Ask someone else about {}."
EVAL = 4  # held-out rows: one micro-batch, so the eval metrics are this batch's


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Pairs (OpenAI preference JSONL) for ORPO/SimPO; thumbs-up/down records (adapter `unpaired`) for KTO."""
    folder = tmp_path_factory.mktemp("toy")
    asked = [(f"Tell me about {t}, please ({i}).", t) for i in range(3) for t in TOPICS]
    (folder / "pairs.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": p}]},
                    "preferred_output": [{"role": "assistant", "content": GOOD.format(t)}],
                    "non_preferred_output": [{"role": "assistant", "content": BAD.format(t)}],
                }
            )
            + "\n"
            for p, t in asked
        )
    )
    (folder / "feedback.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": (BAD, GOOD)[k % 2].format(t)},
                    ],
                    "label": bool(k % 2),
                }
            )
            + "\n"
            for k, (p, t) in enumerate(asked + asked[::-1])
        )
    )
    return folder


def train(kind: str, toy, run_dir, steps: int = 8):
    """(trainer, tokenizer, prepared, eval metrics before training, LoRA tensors before, forwards per step)."""
    from transformers import TrainerCallback, set_seed

    data = (
        [f"data.path={toy / 'pairs.jsonl'}"]
        if kind != "kto"
        else ["data=jsonl", "data.adapter=unpaired", f"data.path={toy / 'feedback.jsonl'}"]
    )
    held_out = EVAL / (60 if kind == "kto" else 30)  # 30 prompts: 30 pairs, or 60 thumbs-up/down records
    dict_cfg = compose(
        f"recipe=tiny_{kind}",
        *data,
        "data.max_prompt_length=null",
        f"data.eval_fraction={held_out}",
        f"trainer.max_steps={steps}",
        "trainer.logging_steps=1",
        f"trainer.save_steps={steps}",
        "eval.every=1000",
        "eval.samples=0",
        f"output_dir={run_dir}",
    )
    cfg = checks.before_weights(dict_cfg)
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    prepared = data_load.load(cfg.data, tok, cfg.trainer.kind)
    assert len(prepared.eval) == EVAL
    run_dir, _ = rundir.start(cfg.output_dir, "x", True, False)
    rundir.prepare(run_dir, dict_cfg, None)
    model_base.prepare_path(cfg.model, tok)
    set_seed(cfg.seed)
    model = lora.apply_lora(model_base.load_base(cfg.model, cfg.quant), cfg.lora, mcfg=cfg.model)
    trainer = kinds.build(cfg, model, tok, prepared, run_dir)
    checkpoints.attach(trainer, run_dir, cfg.trainer.save_total_limit)
    before = trainer.evaluate()
    start = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    forwards: list[int] = []
    counting = [False]

    class CountForwards(TrainerCallback):  # model forwards inside each training step (evaluation, saving excluded)
        def on_step_begin(self, *args, **kwargs):
            forwards.append(0)
            counting[0] = True

        def on_step_end(self, *args, **kwargs):
            counting[0] = False

    hook = model.get_base_model().model.embed_tokens.register_forward_hook(
        lambda *_: forwards.__setitem__(-1, forwards[-1] + 1) if counting[0] else None
    )
    trainer.add_callback(CountForwards())
    checkpoints.train(trainer, None)
    hook.remove()
    checkpoints.save(trainer, tok, run_dir)
    return trainer, tok, prepared, before, start, forwards


def answer_logps(net, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """log p(each answer token | everything before it)."""
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = torch.log_softmax(net(input_ids=ids).logits[0, :-1].float(), -1)
    return logp.gather(1, ids[0, 1:, None])[len(prompt) - 1 :, 0]


def sequence_nll(net, rows: list[dict]) -> float:
    """Mean next-token NLL over every token of prompt + chosen (ORPO's NLL term, as TRL takes it)."""
    total = count = 0.0
    for row in rows:
        ids = torch.tensor([row["llama_prompt_ids"] + row["llama_chosen_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(net(input_ids=ids).logits[0, :-1].float(), -1)
        total -= float(logp.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    return total / count


def stock_model(cfg_kind: str, run_dir):
    """The trained adapter on a freshly loaded base, with stock peft."""
    from peft import PeftModel

    from finetune import config

    cfg = config.load(compose(f"recipe=tiny_{cfg_kind}"))
    model_base.prepare_path(cfg.model, tokenizer_mod.load_tokenizer(cfg.model))
    return PeftModel.from_pretrained(model_base.load_base(cfg.model, cfg.quant), str(run_dir / "adapter")).eval()


def pair_logps(net, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row length-averaged log-probabilities of the chosen and rejected answers."""
    chosen = torch.stack([answer_logps(net, r["llama_prompt_ids"], r["llama_chosen_ids"]).mean() for r in rows])
    rejected = torch.stack([answer_logps(net, r["llama_prompt_ids"], r["llama_rejected_ids"]).mean() for r in rows])
    return chosen, rejected


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    return torch.log(-torch.expm1(x))


def check_common(trainer, run_dir, start, forwards, per_step: int, before: dict) -> tuple[list[dict], dict]:
    """Every LoRA tensor moved, `per_step` forwards a step, the loss fell (training and held out);
    (rows, eval after)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    unchanged = [k for k, v in model.named_parameters() if k in start and torch.equal(start[k], v)]
    assert not unchanged, unchanged
    assert set(forwards) == {per_step}, forwards
    rows = [r for r in metrics.read(run_dir / "metrics.jsonl") if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == trainer.args.max_steps and min(losses[-3:]) < losses[0] - 0.02, losses
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.02, (before["eval_loss"], after["eval_loss"])
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file() and not (run_dir / "adapter" / "ref").exists()
    return rows, after


def test_orpo(toy, tmp_path):
    trainer, tok, prepared, before, start, forwards = train("orpo", toy, tmp_path / "run")
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default"}  # no reference adapter: the model is the only policy
    _, after = check_common(trainer, tmp_path / "run", start, forwards, 1, before)  # chosen + rejected: one forward

    # step 0, from the definition: NLL(chosen) - beta * mean log sigmoid(log odds ratio), odds of averaged logps
    rows, beta = prepared.eval.to_list(), trainer.args.beta
    with model.disable_adapter():  # the starting point: a new LoRA is zero
        nll, (c, r) = sequence_nll(model, rows), pair_logps(model, rows)
    ratio = F.logsigmoid((c - r) - (log1mexp(c) - log1mexp(r))).mean()
    assert before["eval_loss"] == pytest.approx(nll - beta * float(ratio), abs=2e-3)
    assert before["eval_loss"] == pytest.approx(math.log(32000) + beta * math.log(2), abs=0.1)  # uniform-ish start

    c, r = pair_logps(stock_model("orpo", tmp_path / "run"), rows)
    assert after["eval_logps/chosen"] == pytest.approx(float(c.mean()), abs=2e-3)
    assert after["eval_logps/rejected"] == pytest.approx(float(r.mean()), abs=2e-3)


def test_simpo(toy, tmp_path):
    trainer, tok, prepared, before, start, forwards = train("simpo", toy, tmp_path / "run")
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default"}
    _, after = check_common(trainer, tmp_path / "run", start, forwards, 1, before)

    # step 0: mean -log sigmoid(beta * (avg logp chosen - avg logp rejected) - gamma)
    rows, beta, gamma = prepared.eval.to_list(), trainer.args.beta, trainer.args.simpo_gamma
    with model.disable_adapter():
        c, r = pair_logps(model, rows)
    assert before["eval_loss"] == pytest.approx(float(F.softplus(gamma - beta * (c - r)).mean()), abs=1e-3)
    assert before["eval_loss"] == pytest.approx(math.log1p(math.exp(gamma)), abs=0.05)  # equal answers: log(1+e^gamma)

    c, r = pair_logps(stock_model("simpo", tmp_path / "run"), rows)
    assert after["eval_logps/chosen"] == pytest.approx(float(c.mean()), abs=2e-3)
    assert after["eval_rewards/margins"] == pytest.approx(beta * float((c - r).mean()), abs=5e-3)
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.1  # the preference is learnt


def test_kto(toy, tmp_path):
    trainer, tok, prepared, before, start, forwards = train("kto", toy, tmp_path / "run", steps=6)  # 4 passes a step
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert set(model.peft_config) == {"default", "ref"}  # the reference: a frozen copy of the starting adapter
    # per step: policy, reference, and the KL sequences under both
    rows_logged, after = check_common(trainer, tmp_path / "run", start, forwards, 4, before)
    assert before["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    assert rows_logged[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert before["eval_kl"] == 0.0 and before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)

    rows = prepared.eval.to_list()
    assert {r["label"] for r in rows} == {True, False}
    net = stock_model("kto", tmp_path / "run")
    sums = {
        lab: [
            float(answer_logps(net, r["llama_prompt_ids"], r["llama_completion_ids"]).sum())
            for r in rows
            if r["label"] is lab
        ]
        for lab in (True, False)
    }
    assert after["eval_logps/chosen"] == pytest.approx(sum(sums[True]) / len(sums[True]), abs=5e-3)
    assert after["eval_logps/rejected"] == pytest.approx(sum(sums[False]) / len(sums[False]), abs=5e-3)
    assert after["eval_rewards/margins"] > 0.05  # good answers gained on bad ones


def test_kto_weights_scale_their_own_side_of_the_loss(toy, tmp_path):
    """trainer.desirable_weight scales the good answers' loss terms and trainer.undesirable_weight the bad ones'.
    At step 0 every term is 1 - sigmoid(0) = 0.5, so a batch of 3 good and 1 bad answers with weights 2 and 1
    has loss 0.5 x (3 x 2 + 1 x 1) / 4 = 0.875 (the weights swapped would give 0.625)."""
    from datasets import Dataset
    from transformers import set_seed

    dict_cfg = compose(
        "recipe=tiny_kto",
        "data=jsonl",
        "data.adapter=unpaired",
        f"data.path={toy / 'feedback.jsonl'}",
        "data.max_prompt_length=null",
        "data.eval_fraction=0",
        "trainer.micro_batch_size=4",
        "trainer.desirable_weight=2",
        "trainer.undesirable_weight=1",
        f"output_dir={tmp_path / 'run'}",
    )
    cfg = checks.before_weights(dict_cfg)
    tok = tokenizer_mod.load_tokenizer(cfg.model)
    prepared = data_load.load(cfg.data, tok, cfg.trainer.kind)
    rows = prepared.train.to_list()
    batch = [r for r in rows if r["label"]][:3] + [r for r in rows if not r["label"]][:1]
    model_base.prepare_path(cfg.model, tok)
    set_seed(cfg.seed)
    model = lora.apply_lora(model_base.load_base(cfg.model, cfg.quant), cfg.lora, mcfg=cfg.model)
    trainer = kinds.build(cfg, model, tok, prepared, tmp_path / "run")
    assert trainer.evaluate(eval_dataset=Dataset.from_list(batch))["eval_loss"] == pytest.approx(0.875, abs=1e-6)
