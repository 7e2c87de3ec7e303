"""Loss and perplexity of a run, and of the bare base it started from, on any data config:
`python finetune/evaluate.py run=outputs/<run> [data=oasst] [split=eval|train|all]`.

`benchmarks=[gsm8k_mini,hellaswag_mini]` instead scores the run and its base on lm-evaluation-harness tasks
(finetune/benchmarks): one base-vs-tuned table, saved to <run>/benchmarks.json (the model card shows it).

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

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from finetune import config
from finetune.benchmarks.options import BenchmarksConfig, argv_shorthand
from finetune.config import ConfigError, DataConfig, ModelConfig, QuantConfig, TrainConfig
from finetune.config.methods import METHODS
from finetune.runtime import console
from finetune.ship.long_context import LongContextConfig

SPLITS = ("eval", "train", "all")


@dataclass
class EvaluateConfig:
    run: str | None = None
    model: ModelConfig | None = None
    data: DataConfig | None = None
    split: str = "eval"
    base: bool = True
    quant: QuantConfig | None = None  # the `quant=` group; None: as the run trained, none for a bare model
    batch_size: int = 4
    out: str | None = None
    benchmarks: BenchmarksConfig = field(default_factory=BenchmarksConfig)  # tasks: lm_eval benchmarks instead of loss
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
    from torch.nn.utils.rnn import pad_sequence

    def pad(rows: list[list[int]], value: int = 0) -> torch.Tensor:
        return pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=value)

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            rows = dataset[i : i + batch_size]
            ids = pad(rows["input_ids"], pad_id)
            keep = pad(rows["assistant_masks"]).bool()
            attention = pad([[1] * len(r) for r in rows["input_ids"]])
            labels = ids.masked_fill(~keep, -100)[:, 1:].to(model.device)
            logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device)).logits
            total += float(
                F.cross_entropy(
                    logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            )
            count += int((labels != -100).sum())
    return total / max(count, 1), count


def split_dataset(dcfg: DataConfig, tokenizer, split: str):
    """The tokenized `split` of a data config, exactly as training tokenizes it (same cache)."""
    from datasets import concatenate_datasets

    from finetune.data import load as data

    prepared = data.load(dcfg, tokenizer)
    train, held_out = prepared.train, prepared.eval
    if split == "eval" and held_out is None and not dcfg.eval_fraction:
        raise ConfigError(
            [
                f"split=eval: data={dcfg.name} has no held-out split (data.eval_fraction=0 and no "
                "data.eval_path); set data.eval_fraction=0.1, or split=train or split=all"
            ]
        )
    if split == "eval" and held_out is None:  # a small file: its fraction rounds to no example
        raise ConfigError(
            [
                f"split=eval: data={dcfg.name} has no held-out split (data.eval_fraction={dcfg.eval_fraction} of "
                f"{len(train)} examples rounds to none); give data.eval_path=<held-out file>, or split=train or "
                "split=all"
            ]
        )
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
        merged = bool(ecfg.benchmarks.tasks and ecfg.benchmarks.merged)  # benchmarks.merged=true scores merged/
        problems += rundir.run_problems(Path(ecfg.run).expanduser().resolve(), merged=merged)
    elif not ecfg.model:
        problems.append("run: required; give run=outputs/<run>, or model=<name> data=<name> for a bare base model")
    elif not ecfg.data and not ecfg.long_context.length:
        problems.append("data: required with model=; pick a data config: data=oasst")
    from finetune.ship import long_context

    return problems + long_context.problems(ecfg.long_context)


def table(results: list[Result], dcfg: DataConfig, split: str) -> str:
    r0 = results[0]
    lines = [
        f"{dcfg.name}, {split} split: {r0.examples} sequences, {r0.tokens:,} scored tokens (answers + EOS)",
        f"{'model':<44} {'loss':>8} {'perplexity':>12}",
    ]
    lines += [f"{r.model:<44} {r.loss:>8.4f} {r.perplexity:>12,.2f}" for r in results]
    return "\n".join(lines)


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="evaluate")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.data import examples
    from finetune.runs import lock
    from finetune.runs.rundir import run_config

    # Check everything that needs no weights: the run or model, the data, the split
    ecfg: EvaluateConfig = config.schema_object(dict_cfg, check)
    if ecfg.benchmarks.tasks:
        return benchmark(ecfg)
    run = Path(ecfg.run).expanduser().resolve() if ecfg.run else None
    if run:  # held as a reader: a training job does not replace the adapter while it is read
        lock.share(run, "evaluate.py")
    train_cfg = run_config(run) if run else TrainConfig(model=ecfg.model, quant=QuantConfig())
    if ecfg.long_context.length:  # long-context perplexity and passkey retrieval (ship/long_context.py)
        from finetune.model.tokenizer import load_tokenizer
        from finetune.ship import loading, long_context

        tokenizer = loading.load_tokenizer(run, train_cfg) if run else load_tokenizer(ecfg.model)
        return console.info(
            long_context.evaluate(ecfg.long_context, run, train_cfg, tokenizer, ecfg.quant, ecfg.base, ecfg.out)
        )
    dcfg = ecfg.data or train_cfg.data
    if not ecfg.data and not (method := METHODS[train_cfg.trainer.kind]).conversations:
        from finetune.data.hints import sft_data_for

        raise ConfigError(
            [
                f"run={run} is a {method.name.upper()} run: its data are {method.data}, and evaluate "
                f"scores conversations; pick SFT data: {sft_data_for(train_cfg)}"
            ]
        )
    if problems := examples.check(dcfg):
        raise ConfigError(problems)
    from finetune.model.tokenizer import load_tokenizer  # torch: after the checks above
    from finetune.ship import loading

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
    out = (
        Path(ecfg.out)
        if ecfg.out
        else (run / "eval" if run else Path("outputs", "eval"))
        / (f"{'' if run else train_cfg.model.name + '-'}{dcfg.name}-{ecfg.split}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "run": str(run) if run else None,
                "data": dcfg.name,
                "split": ecfg.split,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    console.info(table(results, dcfg, ecfg.split) + f"\nsaved: {out}")


def benchmark(ecfg: EvaluateConfig) -> None:
    """lm_eval tasks on the run's base and on the run (base + adapter as trained, or merged/ with
    benchmarks.merged=true): one table, <run>/benchmarks.json. Tasks and their data are checked before weights."""
    import lm_eval

    from finetune.benchmarks import backends, report, tasks
    from finetune.runs.rundir import run_config
    from finetune.ship import loading

    bench = ecfg.benchmarks
    if not ecfg.run:
        raise ConfigError(["benchmarks: give run=outputs/<run> (the base it started from is scored beside it)"])
    run = Path(ecfg.run).expanduser().resolve()  # checked by `check`, merged/ included when benchmarks.merged
    train_cfg = run_config(run)
    backends.check(bench, run)  # backend=vllm: installed or one line saying it is not
    tasks.build(bench.tasks, bench.include)  # unknown names, missing data, offline stock tasks: one error, no weights
    chat = bench.chat_template if bench.chat_template is not None else train_cfg.data.adapter != "text"
    tokenizer = loading.load_tokenizer(run, train_cfg)
    scores = benchmark_scores(ecfg, train_cfg, run, tokenizer, chat)
    mode = loading.quant_config(ecfg.quant, train_cfg, merged=False).mode
    labels = (f"{train_cfg.model.name} ({mode})", f"{run.name} ({'merged/' if bench.merged else 'adapter, ' + mode})")
    rows = report.rows(scores["base"], scores["tuned"])
    matched = scores["tuned"]["chat_ids_match"]
    note = (
        None
        if not chat
        else "prompts in the Llama 2 chat format (lm_eval's chat-template path gives the ids training used)"
        if matched in (True, None)
        else "prompts in the Llama 2 chat format, but lm_eval's "
        "chat-template path does NOT give the ids training used (compare chat_format.encode_prompt)"
    )
    out = report.write(
        run,
        {
            "run": str(run),
            "tasks": bench.tasks,
            "limit": bench.limit,
            "chat_template": chat,
            "chat_ids_match": matched,
            "chat_note": note,
            "lm_eval": lm_eval.__version__,
            "models": dict(zip(("base", "tuned"), labels)),
            "rows": rows,
            "datasets": scores["tuned"]["datasets"],
            "scores": scores,
        },
    )
    cards = [p for p in (run / "adapter" / "README.md", run / "merged" / "README.md") if report.update_card(p, run)]
    console.info(
        report.table(rows, *labels)
        + (f"\n{note}" if note else "")
        + f"\nsaved: {out}"
        + "".join(f"\nmodel card: {p} (model-index)" for p in cards)
    )


def benchmark_scores(ecfg: EvaluateConfig, train_cfg: TrainConfig, run: Path, tokenizer, chat: bool) -> dict:
    """runner.evaluate's output for the base (None with base=false) and the tuned model."""
    from finetune.benchmarks import backends, runner
    from finetune.ship import loading

    bench = ecfg.benchmarks
    if bench.backend == "vllm":
        lms = {
            "base": lambda: backends.vllm_lm(train_cfg, run, False, False, ecfg.batch_size),
            "tuned": lambda: backends.vllm_lm(train_cfg, run, not bench.merged, bench.merged, ecfg.batch_size),
        }
        return {
            k: runner.evaluate_lm(lm(), tokenizer, bench, chat) if k == "tuned" or ecfg.base else None
            for k, lm in lms.items()
        }
    base = loading.load_base(run, train_cfg, tokenizer, ecfg.quant)
    scores = {"base": runner.evaluate(base, tokenizer, bench, chat, ecfg.batch_size) if ecfg.base else None}
    if bench.merged:
        del base
        tuned = loading.load_base(run, train_cfg, tokenizer, None, merged=True)
    else:
        tuned = loading.add_adapter(base, run)
    scores["tuned"] = runner.evaluate(tuned, tokenizer, bench, chat, ecfg.batch_size)
    return scores


if __name__ == "__main__":
    sys.argv[1:] = argv_shorthand(sys.argv[1:])
    main()
