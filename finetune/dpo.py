"""Direct Preference Optimization through TRL's DPOTrainer: Meta-exact tokens, no second model in memory.

The reference policy is never a second copy of the base. Given our PeftModel and no `ref_model`, TRL 1.16
copies the "default" adapter into a frozen adapter named "ref" on the same base and evaluates the reference
through it: a new LoRA copies as zeros (B = 0), so the reference is the base; an `init_adapter` (an SFT
adapter) copies as itself, so the reference is the SFT policy. Either way the extra memory is one adapter.

DPOTrainer 1.16 always re-tokenizes `prompt`/`chosen`/`rejected` text itself with the Hugging Face tokenizer,
which differs from Meta's SentencePiece encoding (runs of spaces, turn boundaries). So we encode pairs with
`finetune.chat_format`, carry the ids in `llama_*_ids` columns, hand TRL empty text columns (its tokenization
of them is a no-op we never read), and feed our ids to TRL's own `DataCollatorForPreference` (`collate`).

Reference log-probs can be precomputed once (`trainer.precompute_ref=true`). The tokenized pairs are written
under $FINETUNE_CACHE/dpo/<hash of the token ids>/, and TRL writes its reference log-prob table beside them
named by a hash of the dataset and of every model weight (base + adapters): data + model + adapter. A later
run with the same three finds the table and skips the reference pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from finetune import chat_format, data
from finetune.data import DataError, Stats

ID_COLUMNS = ("llama_prompt_ids", "llama_chosen_ids", "llama_rejected_ids")
# TRL 1.16's DPO losses (DPOConfig.loss_type); sigmoid is the DPO paper's, ipo/hinge/robust... its variants
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


# --------------------------------------------------------------------------------------------- checks
def check(cfg) -> list[str]:
    """Problems in a DPO config, found before any weight loads."""
    t, problems = cfg.trainer, []
    if t.loss_type not in LOSS_TYPES:
        problems.append(f"trainer.loss_type={t.loss_type}: use one of {', '.join(LOSS_TYPES)}")
    if t.beta <= 0:
        problems.append(f"trainer.beta={t.beta}: must be > 0 (0.1 is the DPO paper's; 0.01-0.5 is usual)")
    if cfg.data.max_prompt_length is not None and cfg.data.max_prompt_length >= cfg.data.max_length:
        problems.append(f"data.max_prompt_length={cfg.data.max_prompt_length} leaves no room for an answer in "
                        f"data.max_length={cfg.data.max_length}; lower it or raise data.max_length")
    if cfg.init_adapter and (Path(cfg.init_adapter) / "adapter_config.json").is_file():
        problems += adapter_base_problems(Path(cfg.init_adapter), cfg.model)
    return problems


def adapter_base_problems(adapter: Path, mcfg) -> list[str]:
    """An `init_adapter` trained on another base: its base_model_name_or_path names another model, or its LoRA
    shapes do not fit `model.arch` (read from the safetensors header; no weights load)."""
    meta = json.loads((adapter / "adapter_config.json").read_text())
    theirs = Path(str(meta.get("base_model_name_or_path") or "")).name.lower()
    ours = {Path(str(mcfg.path)).name.lower(), mcfg.name.lower(), f"random-{mcfg.name}".lower()}
    fix = (f"train the SFT adapter on this model, or pick the model it was trained on (model=... or "
           f"model.path=...)")
    if theirs and theirs not in ours:
        return [f"init_adapter={adapter} was trained on {meta['base_model_name_or_path']}, not on "
                f"model.path={mcfg.path}; {fix}"]
    a = mcfg.arch
    head = a.hidden_size // a.num_heads
    dims = {"q_proj": (a.hidden_size, a.hidden_size), "k_proj": (a.hidden_size, a.num_kv_heads * head),
            "v_proj": (a.hidden_size, a.num_kv_heads * head), "o_proj": (a.hidden_size, a.hidden_size),
            "gate_proj": (a.hidden_size, a.intermediate_size), "up_proj": (a.hidden_size, a.intermediate_size),
            "down_proj": (a.intermediate_size, a.hidden_size)}
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        return [f"init_adapter={adapter}: no adapter_model.safetensors there; point it at a run's adapter/ folder"]
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            parts = key.split(".")
            module, layer = parts[-3], int(parts[parts.index("layers") + 1]) if "layers" in parts else 0
            shape = tuple(f.get_slice(key).get_shape())
            want = dims.get(module)
            bad = layer >= a.num_layers or (want and (
                (parts[-2] == "lora_A" and shape[1] != want[0]) or (parts[-2] == "lora_B" and shape[0] != want[1])))
            if bad:
                return [f"init_adapter={adapter}: {key} has shape {list(shape)}, which does not fit "
                        f"model={mcfg.name} (hidden {a.hidden_size}, {a.num_layers} layers); {fix}"]
    return []


# --------------------------------------------------------------------------------------------- tokenize
def encode_pair(sp, ex: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids: each `prompt + completion` is exactly Meta's encoding of the dialog
    ending with that answer (and its EOS); the prompt is the part both share."""
    def encode(answer: str):
        return chat_format.encode_dialog(sp, [*ex["prompt"], {"role": "assistant", "content": answer}], "last")

    (chosen, c_mask), (rejected, r_mask) = encode(ex["chosen"]), encode(ex["rejected"])
    n = min(c_mask.index(1), r_mask.index(1))
    while chosen[:n] != rejected[:n]:  # a piece spanning the prompt/answer boundary: start where they agree
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def tokenize(exs: list[dict], sp, dcfg, stats: Stats) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in ("prompt", "chosen", "rejected", *ID_COLUMNS)}
    for i, ex in enumerate(exs):
        try:
            prompt, chosen, rejected = encode_pair(sp, ex)
        except chat_format.DialogError as exc:
            raise DataError(f"{dcfg.path}: pair {i}: {exc}") from None
        if dcfg.max_prompt_length and len(prompt) > dcfg.max_prompt_length:
            stats.skipped["prompt longer than data.max_prompt_length"] = \
                stats.skipped.get("prompt longer than data.max_prompt_length", 0) + 1
            continue
        room = dcfg.max_length - len(prompt)
        if len(prompt) + max(len(chosen), len(rejected)) > dcfg.max_length:
            if dcfg.too_long == "drop" or room < 1:
                stats.dropped_too_long += 1
                continue
            chosen, rejected = chosen[:room], rejected[:room]
            stats.cut += 1  # the answers lose their EOS
        for col, value in zip(cols, ("", "", "", prompt, chosen, rejected)):
            cols[col].append(value)
        stats.lengths.append(len(prompt) + max(len(chosen), len(rejected)))
        stats.examples += 1
    return cols


def check_pairs(exs: list[dict], dcfg) -> None:
    """One error for data that is not preference pairs (identical answers are refused per record by
    `data.examples`, with the file and line)."""
    if not exs or any(k not in exs[0] for k in ("prompt", "chosen", "rejected")):
        raise DataError(f"data={dcfg.name} (adapter {dcfg.adapter}) gives {sorted(exs[0]) if exs else 'nothing'}, "
                        "not preference pairs (prompt/chosen/rejected); DPO needs chosen and rejected answers: "
                        "use a preference data config (data=orca_dpo) or train with trainer=sft")


def load(dcfg, tokenizer) -> tuple[object, object | None, Stats]:
    """(train, eval or None, stats): Meta-exact preference pairs as on-disk `datasets.Dataset`s."""
    stats = Stats()
    train, evals = data.splits(dcfg, stats)
    check_pairs(train + evals, dcfg)
    train_cols = tokenize(train, tokenizer.sp, dcfg, stats)
    eval_cols = tokenize(evals, tokenizer.sp, dcfg, stats) if evals else None
    stats.eval_examples = len(eval_cols["prompt"]) if eval_cols else 0
    if not train_cols["prompt"]:
        raise DataError(f"data={dcfg.name}: every pair is longer than data.max_length={dcfg.max_length} (or its "
                        "prompt than data.max_prompt_length); raise them or set data.too_long=truncate")
    return on_disk(train_cols), on_disk(eval_cols) if eval_cols and eval_cols["prompt"] else None, stats


def on_disk(cols: dict[str, list]):
    """The columns as a Dataset saved under $FINETUNE_CACHE/dpo/<hash of the ids>, so that TRL's reference
    log-prob table is written beside it and found again by later runs. Written once, under a lock."""
    from datasets import Dataset, load_from_disk
    from filelock import FileLock

    digest = hashlib.sha256(json.dumps([cols[c] for c in ID_COLUMNS]).encode()).hexdigest()[:16]
    path = Path(os.environ.get("FINETUNE_CACHE", ".cache")).resolve() / "dpo" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "dataset_info.json").is_file():
            tmp = path.with_name(f"{digest}.tmp{os.getpid()}")
            Dataset.from_dict(cols).save_to_disk(str(tmp))
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    return load_from_disk(str(path))


# --------------------------------------------------------------------------------------------- train
def collate(pad_id: int):
    """TRL's DataCollatorForPreference over our Meta-exact id columns (and cached reference log-probs)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    pad = DataCollatorForPreference(pad_token_id=pad_id)

    def collate_fn(examples: list[dict]) -> dict:
        return pad([{"prompt_ids": ex["llama_prompt_ids"], "chosen_ids": ex["llama_chosen_ids"],
                     "rejected_ids": ex["llama_rejected_ids"],
                     **{k: ex[k] for k in ("ref_chosen_logps", "ref_rejected_logps") if k in ex}}
                    for ex in examples])

    return collate_fn


def reference_tables(train_ds) -> set[str]:
    """TRL's cached reference log-prob tables beside the training pairs."""
    folder = Path(train_ds.cache_files[0]["filename"]).parent
    return {p.name for p in folder.glob("cache-*.arrow")}


def build_dpo(cfg, model, tokenizer, train_ds, eval_ds, run_dir: Path):
    """TRL's DPOTrainer on our PeftModel: reference = the same model with the frozen "ref" adapter."""
    from trl import DPOConfig, DPOTrainer

    from finetune import console
    from finetune.trainers import callbacks, common_args

    t = cfg.trainer
    args = DPOConfig(
        **common_args(cfg, run_dir, eval_ds is not None),
        beta=t.beta,
        loss_type=[t.loss_type],
        max_length=None,  # lengths are enforced when tokenizing (data.max_length, data.max_prompt_length)
        precompute_ref_log_probs=t.precompute_ref,
        remove_unused_columns=False,  # our llama_*_ids columns reach `collate`
    )
    before = reference_tables(train_ds)
    trainer = DPOTrainer(model=model, args=args, data_collator=collate(tokenizer.pad_id), train_dataset=train_ds,
                         eval_dataset=eval_ds, processing_class=tokenizer.hf,
                         callbacks=callbacks(cfg, tokenizer, run_dir))
    if t.precompute_ref:
        made = reference_tables(train_ds) - before
        console.info(f"reference log-probs: {'computed and cached' if made else 'reused from the cache'} in "
                     f"{Path(train_ds.cache_files[0]['filename']).parent}")
    return trainer
