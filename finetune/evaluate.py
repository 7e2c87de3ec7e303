"""Loss and perplexity of a run, and of the bare base it started from, on any data config:
`python finetune/evaluate.py run=outputs/<run> [data=oasst] [split=eval|train|all]`.

The loss is the training loss's: mean negative log-likelihood over the tokens training scores (assistant
answers and their EOS, `assistant_masks`), token-weighted over the whole split; perplexity = exp(loss). Results
go to <run>/eval/<data>-<split>.json and a summary table to stdout.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from finetune import config
from finetune.runtime import console
from finetune.config import ConfigError, DataConfig, ModelConfig, QuantConfig, TrainConfig
from finetune.ship.long_context import LongContextConfig

SPLITS = ("eval", "train", "all")


@dataclass
class EvaluateConfig:
    run: Optional[str] = None
    model: Optional[ModelConfig] = None
    data: Optional[DataConfig] = None
    split: str = "eval"
    base: bool = True
    quant: Optional[QuantConfig] = None  # the `quant=` group; None: as the run trained, none for a bare model
    batch_size: int = 4
    out: Optional[str] = None
    long_context: LongContextConfig = field(default_factory=LongContextConfig)  # length=N: ship/long_context.py


@dataclass
class Result:
    model: str  # what was evaluated: "base <name> (<quant>)" or "<run> (adapter)"
    loss: float
    perplexity: float
    tokens: int  # scored tokens
    examples: int


config.register()
ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def token_loss(model, dataset, batch_size: int, pad_id: int) -> tuple[float, int]:
    """(mean NLL, scored tokens) over `input_ids` where `assistant_masks` is 1, token-weighted."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            rows = dataset[i: i + batch_size]
            width = max(map(len, rows["input_ids"]))
            ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows["input_ids"]])
            keep = torch.tensor([m + [0] * (width - len(m)) for m in rows["assistant_masks"]]).bool()
            attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows["input_ids"]])
            labels = ids.masked_fill(~keep, -100)[:, 1:].to(model.device)
            logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits
            total += float(F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / max(count, 1), count


def split_dataset(dcfg: DataConfig, tokenizer, split: str):
    """The tokenized `split` of a data config, exactly as training tokenizes it (same cache)."""
    from datasets import concatenate_datasets

    from finetune.data import load as data

    prepared = data.load(dcfg, tokenizer)
    train, held_out = prepared.train, prepared.eval
    if split == "eval" and held_out is None:
        raise ConfigError([f"split=eval: data={dcfg.name} has no held-out split (data.eval_fraction=0 and no "
                           "data.eval_path); set data.eval_fraction=0.1, or split=train or split=all"])
    if split == "all" and held_out is not None:
        return concatenate_datasets([train, held_out])
    return held_out if split == "eval" else train


def check(ecfg: EvaluateConfig) -> list[str]:
    from finetune.runs import rundir

    problems = []
    if ecfg.split not in SPLITS:
        problems.append(f"split={ecfg.split}: use one of {', '.join(SPLITS)}")
    if ecfg.run and ecfg.model:
        problems.append("give run=<run dir> (its base comes from the run) or model=<name>, not both")
    elif ecfg.run:
        problems += rundir.run_problems(Path(ecfg.run).expanduser().resolve(), merged=False)
    elif not ecfg.model:
        problems.append("run: required; give run=outputs/<run>, or model=<name> data=<name> for a bare base model")
    elif not ecfg.data and not ecfg.long_context.length:
        problems.append("data: required with model=; pick a data config: data=oasst")
    from finetune.ship import long_context

    return problems + long_context.problems(ecfg.long_context)


def table(results: list[Result], dcfg: DataConfig, split: str) -> str:
    r0 = results[0]
    lines = [f"{dcfg.name}, {split} split: {r0.examples} sequences, {r0.tokens:,} scored tokens (answers + EOS)",
             f"{'model':<44} {'loss':>8} {'perplexity':>12}"]
    lines += [f"{r.model:<44} {r.loss:>8.4f} {r.perplexity:>12,.2f}" for r in results]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.data import examples
    from finetune.model.tokenizer import load_tokenizer
    from finetune.runs.rundir import run_config
    from finetune.ship import loading

    # Check everything that needs no weights: the run or model, the data, the split
    if unknown := config.unknown_keys(dict_cfg):  # `+key=...` adds keys Hydra's own check lets through
        raise config.ConfigError(unknown)
    ecfg: EvaluateConfig = OmegaConf.to_object(dict_cfg)  # type: ignore[assignment]
    if problems := check(ecfg):
        raise ConfigError(problems)
    run = Path(ecfg.run).expanduser().resolve() if ecfg.run else None
    train_cfg = run_config(run) if run else TrainConfig(model=ecfg.model, quant=QuantConfig())
    if ecfg.long_context.length:  # long-context perplexity and passkey retrieval (ship/long_context.py)
        from finetune.ship import long_context

        tokenizer = loading.load_tokenizer(run, train_cfg) if run else load_tokenizer(ecfg.model)
        return console.info(long_context.evaluate(ecfg.long_context, run, train_cfg, tokenizer, ecfg.quant,
                                                  ecfg.base, ecfg.out))
    dcfg = ecfg.data or train_cfg.data
    if not ecfg.data and train_cfg.trainer.kind in ("dpo", "orpo", "simpo", "kto"):
        raise ConfigError([f"run={run} is a {train_cfg.trainer.kind.upper()} run: its data are preference "
                           "examples, and evaluate scores conversations; pick an SFT data config: data=oasst"])
    if problems := examples.check(dcfg):
        raise ConfigError(problems)
    tokenizer = loading.load_tokenizer(run, train_cfg) if run else load_tokenizer(ecfg.model)
    dataset = split_dataset(dcfg, tokenizer, ecfg.split)

    # The base (as trained, 4-bit for QLoRA), then the run's adapter on it
    base = loading.load_base(run, train_cfg, tokenizer, ecfg.quant)
    mode = loading.quant_config(ecfg.quant, train_cfg, merged=False).mode
    results = []
    for name in (["base"] if ecfg.base or not run else []) + (["run"] if run else []):
        net = loading.add_adapter(base, run) if name == "run" else base
        loss, tokens = token_loss(net, dataset, ecfg.batch_size, tokenizer.pad_id)
        label = f"{run.name} (adapter)" if name == "run" else f"base {train_cfg.model.name} ({mode})"
        results.append(Result(label, loss, math.exp(loss), tokens, len(dataset)))

    # Report and save
    out = Path(ecfg.out) if ecfg.out else (run / "eval" if run else Path("outputs", "eval")) / (
        f"{'' if run else train_cfg.model.name + '-'}{dcfg.name}-{ecfg.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(run) if run else None, "data": dcfg.name, "split": ecfg.split,
                               "results": [asdict(r) for r in results]}, indent=2) + "\n")
    console.info(table(results, dcfg, ecfg.split) + f"\nsaved: {out}")


if __name__ == "__main__":
    main()
