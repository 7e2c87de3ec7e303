"""ORPO/SimPO/KTO data, collators and checks without training: our ids in TRL's batch layouts, unpaired examples
(thumbs-up/down records, or pairs split in two), KTO's mismatched KL answers, the model card, and every refused
combination of methods and LoRA variants named before any weight loads."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT, compose, run_entry
from finetune import config
from finetune.data import chat_format, pairs, unpaired
from finetune.data import load as data_load
from finetune.data.stats import DataError, Stats
from finetune.model import tokenizer as tokenizer_mod
from finetune.runs import card as modelcard
from finetune.training import checks, kto, pairwise

PAIRS = [("What is 2+2?", "It is 4.", "Five, I think."), ("Name a colour.", "Blue.", "No.")]


@pytest.fixture(scope="module")
def tok():
    return tokenizer_mod.load_tokenizer(config.load(compose("recipe=tiny_kto")).model)


def pair_examples():
    return [{"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r} for p, c, r in PAIRS]


def test_pairwise_collate_is_trls_dpo_collator_layout(tok):
    """ORPO and CPO read chosen_/rejected_ input_ids, attention_mask and labels as TRL's DPODataCollatorWithPadding
    pads them from its own tokenize_row output; ours gives the same tensors from our Meta-exact ids."""
    from trl.experimental.utils import DPODataCollatorWithPadding

    rows = [dict(zip(pairs.ID_COLUMNS, pairs.encode_pair(tok.sp, ex))) for ex in pair_examples()]
    ours = pairwise.collate(tok.pad_id)(rows)
    trl_rows = []
    for row in rows:  # what TRL's tokenize_row makes of each pair
        prompt, trl_row = row["llama_prompt_ids"], {}
        for side in ("chosen", "rejected"):
            answer = row[f"llama_{side}_ids"]
            trl_row.update(
                {
                    f"{side}_input_ids": prompt + answer,
                    f"{side}_labels": [-100] * len(prompt) + answer,
                    f"{side}_attention_mask": [1] * (len(prompt) + len(answer)),
                }
            )
        trl_rows.append(trl_row)
    theirs = DPODataCollatorWithPadding(pad_token_id=tok.pad_id)(trl_rows)
    assert set(ours) == {k for k in theirs if k.startswith(("chosen", "rejected"))}
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    labels = ours["chosen_labels"][0]
    answer = rows[0]["llama_chosen_ids"]
    assert labels[labels != -100].tolist() == answer and answer[-1] == chat_format.EOS_ID


def test_pairs_split_into_a_good_and_a_bad_answer_meta_exact(tok, tmp_path):
    (tmp_path / "p.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "input": {"messages": [{"role": "user", "content": p}]},
                    "preferred_output": [{"role": "assistant", "content": c}],
                    "non_preferred_output": [{"role": "assistant", "content": r}],
                }
            )
            + "\n"
            for p, c, r in PAIRS
        )
    )
    dcfg = config.load(compose("recipe=tiny_kto", f"data.path={tmp_path / 'p.jsonl'}", "data.eval_fraction=0")).data
    rows = data_load.load(dcfg, tok, "kto").train.to_list()
    assert len(rows) == 4 and [r["label"] for r in rows].count(True) == 2
    by_prompt = {}
    for row in rows:
        by_prompt.setdefault(tuple(row["llama_prompt_ids"]), {})[row["label"]] = row["llama_completion_ids"]
    for p, c, r in PAIRS:
        for answer, good in ((c, True), (r, False)):
            dialog = [{"role": "user", "content": p}, {"role": "assistant", "content": answer}]
            want, _ = chat_format.encode_dialog(tok.sp, dialog)
            prompt = next(k for k in by_prompt if want[: len(k)] == list(k))
            assert list(prompt) + by_prompt[prompt][good] == want and want[-1] == chat_format.EOS_ID


def test_thumbs_up_down_records_train_kto_and_nothing_else(tok, tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "label": True}
    bad = {"conv": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}], "thumb": False}
    (tmp_path / "f.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": False}) + "\n")
    over = ["recipe=tiny_kto", "data=jsonl", "data.adapter=unpaired", "data.eval_fraction=0"]
    rows = data_load.load(config.load(compose(*over, f"data.path={tmp_path / 'f.jsonl'}")).data, tok, "kto").train
    assert sorted(rows["label"]) == [False, True]
    ids, mask = chat_format.encode_dialog(tok.sp, good["messages"], "last")
    assert rows[0]["llama_prompt_ids"] + rows[0]["llama_completion_ids"] == ids
    assert rows[0]["llama_completion_ids"] == [t for t, m in zip(ids, mask) if m]

    (tmp_path / "mapped.jsonl").write_text(json.dumps(bad) + "\n" + json.dumps({**bad, "thumb": "yes"}) + "\n")
    mapped = config.load(
        compose(*over, f"data.path={tmp_path / 'mapped.jsonl'}", "data.fields.messages=conv", "data.fields.label=thumb")
    ).data
    with pytest.raises(DataError, match=r"mapped.jsonl:2: label is 'yes', not true or false"):
        data_load.load(mapped, tok, "kto")
    sft = config.load(
        compose("recipe=tiny_lora", "data=jsonl", "data.adapter=unpaired", f"data.path={tmp_path / 'f.jsonl'}")
    ).data
    with pytest.raises(DataError, match=r"answers marked good or bad \(label\); SFT would learn the bad ones too"):
        data_load.load(sft, tok, "sft")
    with pytest.raises(DataError, match=r"gives \['messages'\], not answers marked good or bad; KTO needs"):
        data_load.load(config.load(compose("recipe=tiny_kto", "data=oasst")).data, tok, "kto")


def test_kto_kl_answers_come_from_other_prompts_of_the_batch(tok):
    """Split pairs sit side by side (same prompt): the KL sequence of each example must pair its prompt with an
    answer written for another prompt, and all of the batch's answers are used once (TRL's rotation, shifted)."""
    rows = []
    for ex in pair_examples():
        rows += unpaired.encode(ex, tok.sp, config.load(compose("recipe=tiny_kto")).data, Stats())
    batch = kto.collate(tok.pad_id)(rows)
    assert batch["label"].tolist() == [True, False, True, False]
    completions = [tuple(r["llama_completion_ids"]) for r in rows]
    kl = []
    for i, row in enumerate(rows):
        seq = batch["KL_input_ids"][i][batch["KL_attention_mask"][i] == 1].tolist()
        assert seq[: len(row["llama_prompt_ids"])] == row["llama_prompt_ids"]
        kl.append(tuple(seq[len(row["llama_prompt_ids"]) :]))
        assert kl[-1] in completions and completions.index(kl[-1]) // 2 != i // 2  # another pair's answer
    assert sorted(kl) == sorted(completions)
    assert batch["input_ids"][1][batch["completion_mask"][1] == 1].tolist() == rows[1]["llama_completion_ids"]
    assert kto.shift([[1], [2], [3]]) == 1 and kto.shift([[1], [1]]) == 1  # distinct prompts: TRL's own rotation


REFUSED = [  # (overrides, the start of the one line that names the key and the fix)
    (["recipe=tiny_qlora", "lora.init=pissa"], "lora.init=pissa with quant.mode=nf4: PiSSA's SVD needs 16-bit weights"),
    (["recipe=tiny_qlora", "lora.init=olora"], "lora.init=olora with quant.mode=nf4: over a quantized base peft"),
    (["recipe=tiny_lora", "lora.init=loftq"], "lora.init=loftq with quant.mode=none: LoftQ starts B·A at the 4-bit"),
    (["recipe=tiny_lora", "lora.init=pissa", "lora.use_dora=true"], "lora.use_dora=true with lora.init=pissa: peft"),
    (["recipe=tiny_lora", "lora.init=svd"], "lora.init=svd: use one of default, gaussian, pissa, olora, loftq"),
    (["recipe=tiny_lora", "trainer.loraplus_lr_ratio=0.5"], "trainer.loraplus_lr_ratio=0.5: LoRA+ trains lora_B"),
    (["recipe=tiny_dpo", "trainer.neftune_alpha=5"], "trainer.neftune_alpha with trainer.kind=dpo: the noise would"),
    (["recipe=tiny_kto", "trainer.neftune_alpha=5"], "trainer.neftune_alpha with trainer.kind=kto: the noise would"),
    (
        ["recipe=tiny_lora", "trainer.neftune_alpha=5", "trainer.packing=true"],
        "trainer.neftune_alpha with trainer.packing",
    ),
    (["recipe=tiny_lora", "trainer.neftune_alpha=0"], "trainer.neftune_alpha=0.0: must be > 0"),
    (["recipe=tiny_kto", "trainer.micro_batch_size=1"], "trainer.micro_batch_size=1 with KTO: its KL term pairs"),
    (
        ["recipe=tiny_kto", "trainer.loss_type=sigmoid"],
        "trainer.loss_type=sigmoid with trainer.kind=kto: use one of kto,",
    ),
    (
        ["recipe=tiny_kto", "trainer.precompute_ref=true"],
        "trainer.precompute_ref=true with trainer.kind=kto: not wired",
    ),
    (
        ["recipe=tiny_orpo", "trainer.precompute_ref=true"],
        "trainer.precompute_ref=true with trainer.kind=orpo: ORPO has no",
    ),
    (["recipe=tiny_simpo", "trainer.simpo_gamma=-1"], "trainer.simpo_gamma=-1.0: the target margin must be >= 0"),
    (["recipe=tiny_simpo", "trainer.beta=0"], "trainer.beta=0.0: must be > 0"),
    (["recipe=tiny_orpo", "trainer.packing=true"], "trainer.packing=true with trainer.kind=orpo: ORPO's TRL"),
    (["recipe=tiny_kto", "trainer.packing=true"], "trainer.packing=true with trainer.kind=kto: KTO's TRL"),
    (["recipe=qlora_13b", "trainer=simpo"], "trainer.liger=true with trainer.kind=simpo: the Liger kernels are"),
]


@pytest.mark.parametrize("overrides, start", REFUSED, ids=[o[-1] for o, _ in REFUSED])
def test_unsupported_combinations_are_named_before_weights_load(overrides, start):
    found = checks.problems(compose(*overrides))
    assert [p for p in found if p.startswith(start)], found


def test_what_sharding_cannot_do_is_named(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    found = checks.problems(compose("recipe=tiny_lora", "lora.init=pissa", "trainer.loraplus_lr_ratio=16"))
    assert any(p.startswith("lora.init=pissa under fsdp: the adapter is converted at save") for p in found), found
    assert any(p.startswith("trainer.loraplus_lr_ratio under fsdp: LoRA+ hands the Trainer") for p in found), found
    found = checks.problems(compose("recipe=tiny_qlora", "lora.init=loftq"))
    assert any(p.startswith("lora.init=loftq under fsdp: not checked there") for p in found), found


def test_supported_combinations_pass():
    for overrides in (
        ["recipe=tiny_qlora", "lora.use_dora=true", "trainer.loraplus_lr_ratio=16"],
        ["recipe=tiny_qlora", "lora.init=loftq", "lora.use_rslora=true"],
        ["recipe=tiny_lora", "lora.init=pissa", "trainer.neftune_alpha=5"],
        ["recipe=tiny_lora", "lora.init=olora", "lora.use_rslora=true"],
        ["recipe=tiny_orpo", "lora.use_dora=true", "trainer.neftune_alpha=5"],
        ["recipe=tiny_simpo"],
        ["recipe=tiny_kto", "trainer.loss_type=apo_zero_unpaired"],
    ):
        assert checks.problems(compose(*overrides)) == [], overrides


def test_a_refused_combination_exits_2_before_any_weight_loads(tmp_path):
    proc = run_entry("train.py", "recipe=tiny_qlora", "lora.init=pissa", f"output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        "error: invalid config:\n  - lora.init=pissa with quant.mode=nf4: PiSSA's SVD needs 16-bit weights"
        in proc.stderr
    )
    assert "Loading weights" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()


def test_card_names_the_method_and_the_variants(tmp_path):
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        config.to_yaml(
            compose(
                "recipe=tiny_simpo", "lora.use_dora=true", "trainer.loraplus_lr_ratio=16", "trainer.neftune_alpha=5"
            )
        )
    )
    card = ModelCard(modelcard.render(run, "adapter"))
    assert "llama2_tiny SimPO LoRA adapter" in card.text and "TRL's CPO (loss simpo) trainer" in card.text
    assert (
        "| method | SimPO, LoRA r=8, alpha=16, dropout=0.0, DoRA (a trained magnitude per output row), LoRA+ "
        "(lora_B learning rate x16), NEFTune (noise alpha 5) |" in card.text
    )
    assert {"simpo", "dora", "loraplus", "neftune"} <= set(card.data.tags)
    (run / "config.yaml").write_text(config.to_yaml(compose("recipe=tiny_lora", "lora.init=pissa")))
    assert "PiSSA initialisation, saved converted to a plain LoRA of rank 2r" in modelcard.render(run, "merged")


def test_every_new_recipe_composes_with_its_kind():
    for name, kind in (("tiny_orpo", "orpo"), ("tiny_simpo", "simpo"), ("tiny_kto", "kto")):
        cfg = config.load(compose(f"recipe={name}"))
        assert cfg.trainer.kind == kind and (ROOT / "recipes" / f"{name}.yaml").is_file()


def test_planner_counts_each_method_and_dora():
    """Pairs hold twice the tokens of a micro-batch; ORPO and SimPO carry no reference adapter and make no pass
    without gradients; DPO one, KTO three (reference, and the KL sequences under policy and reference); DoRA's
    magnitudes and saved outputs are counted by hand here (13B: 40 layers, 53,248 output features per layer)."""
    from finetune.planning import planner

    s = planner.Setup(
        hidden=5120, ffn=13824, layers=40, heads=40, kv_heads=40, quant="nf4", lora_r=64, micro_batch=2, max_length=1024
    )
    est = {k: planner.memory(s.but(kind=k)) for k in ("sft", "dpo", "orpo", "simpo", "kto")}
    ref = "reference adapter (frozen copy of the starting LoRA)"
    assert ref in est["dpo"].parts and ref in est["kto"].parts and ref not in est["orpo"].parts
    assert not any("reference" in k for k in est["orpo"].parts) and est["orpo"].parts == est["simpo"].parts
    assert est["sft"].allocated < est["orpo"].allocated < est["dpo"].allocated
    flops = {k: planner.flops_per_token(s.but(kind=k)) for k in est}
    assert flops["orpo"] == flops["simpo"] == flops["sft"] < flops["dpo"] < flops["kto"]

    outs = 4 * 5120 + 2 * 13824 + 5120
    dora = planner.memory(s.but(dora=True, checkpointing=False))
    assert dora.parts[
        f"DoRA magnitudes ({40 * outs / 1e6:.2f}M, float32, with gradients and optimizer states)"
    ] == 40 * outs * (4 + 4 + 8)
    assert dora.parts["DoRA saved outputs (40 layers)"] == 40 * 2 * outs * 2 * (2 * 1024)  # 2 tensors, bf16, tokens
    assert planner.memory(s.but(dora=True)).allocated > planner.memory(s).allocated


@pytest.mark.parametrize(
    "labels, counts, fix",
    [
        ([True] * 6, "has 6 desirable (label true) and 0 undesirable (label false)", "Add examples marked false"),
        ([False] * 5, "has 0 desirable (label true) and 5 undesirable (label false)", "Add examples marked true"),
    ],
    ids=["only-desirable", "only-undesirable"],
)
def test_kto_with_answers_of_one_kind_only_is_refused_with_the_counts(tok, tmp_path, labels, counts, fix):
    """TRL trains on one side of KTO's loss and only prints a weighting hint; train.py and prepare.py refuse it
    right after tokenizing (`kinds.check_data`), before any weight loads."""
    from finetune.training import kinds

    path = tmp_path / "f.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": f"Answer {i}."},
                    ],
                    "label": good,
                }
            )
            + "\n"
            for i, good in enumerate(labels)
        )
    )
    over = ["recipe=tiny_kto", "data=jsonl", "data.adapter=unpaired", f"data.path={path}", "data.eval_fraction=0"]
    cfg = config.load(compose(*over))
    with pytest.raises(DataError) as err:
        kinds.check_data(cfg, data_load.load(cfg.data, tok, "kto"))
    assert str(err.value).startswith(
        f"data=jsonl ({path}): KTO needs answers marked good and answers marked bad; "
        f"the training split {counts}. {fix}, or train on good answers alone with SFT"
    )
    path.write_text(
        path.read_text()
        + json.dumps(
            {
                "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}],
                "label": not labels[0],
            }
        )
        + "\n"
    )
    kinds.check_data(cfg, data_load.load(cfg.data, tok, "kto"))  # one of the other kind is enough
