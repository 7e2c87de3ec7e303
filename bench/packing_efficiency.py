"""Packing efficiency and preprocessing throughput on the bundled OpenAssistant conversations (CPU, seconds).

  python bench/packing_efficiency.py            # appends to bench/results/packing_cpu.md

Tokenizes data/sft/oasst-en100 through finetune.data (Meta's Llama 2 chat format, fresh cache), packs it with TRL's
best-fit-decreasing packing (what trainer.packing=true runs) and compares the token slots each layout computes:
  packed   real tokens / (packs x max_length): how full the bins are; padding-free rows compute only real tokens
  longest  pad each micro-batch to its longest conversation (dynamic padding, random order as the Trainer samples)
  max      pad every conversation to max_length (the pad-to-max baseline)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetune import config  # noqa: E402
from finetune.data import load as data  # noqa: E402
from finetune.model import tokenizer as model  # noqa: E402


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config.register()
    with initialize_config_dir(config_dir=str(config.CONFIGS_DIR), version_base="1.3"):
        return config.load(hydra_compose(config_name="train", overrides=["recipe=tiny_qlora", *overrides]))


def padded_to_longest(lengths: list[int], micro_batch: int, seed: int = 42) -> int:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches = [order[i : i + micro_batch] for i in range(0, len(order), micro_batch)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def measure(max_length: int, micro_batch: int) -> dict:
    from trl.data_utils import pack_dataset

    cfg = compose([f"data.max_length={max_length}", "data.eval_fraction=0"])
    tok = model.load_tokenizer(cfg.model)
    old = os.environ.get("FINETUNE_CACHE")
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache, so tokenization is measured, not read back
        os.environ["FINETUNE_CACHE"] = cache
        try:
            t0 = time.perf_counter()
            prepared = data.load(cfg.data, tok)
            train, stats = prepared.train, prepared.stats
            tokenize_s = time.perf_counter() - t0
        finally:
            os.environ.pop("FINETUNE_CACHE") if old is None else os.environ.update(FINETUNE_CACHE=old)
    lengths = [len(x) for x in train["input_ids"]]
    real = sum(lengths)
    t0 = time.perf_counter()
    packs = pack_dataset(train.select_columns(["input_ids"]), max_length, strategy="bfd")
    pack_s = time.perf_counter() - t0
    n_packs = len(packs)
    return {
        "max_length": max_length,
        "conversations": len(lengths),
        "dropped": stats.dropped_too_long,
        "real": real,
        "packs": n_packs,
        "packed": real / (n_packs * max_length),
        "longest": real / padded_to_longest(lengths, micro_batch),
        "max": real / (len(lengths) * max_length),
        "tokenize_s": tokenize_s,
        "pack_s": pack_s,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-length", type=int, action="append", help="repeatable; default 1024, 2048, 4096")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    rows = [measure(n, a.micro_batch) for n in (a.max_length or [1024, 2048, 4096])]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### OASST (data/sft/oasst-en100), micro-batch {a.micro_batch} · {date} · CPU "
        f"({platform.machine()}, {os.cpu_count()} cores)",
        "",
        f"`python bench/packing_efficiency.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| max_length | conversations (dropped) | real tokens | packs | packing efficiency | "
        "pad to longest | pad to max | packed ÷ pad-to-max tokens | tokenize (conv/s, tokens/s) | "
        "pack (tokens/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['max_length']} | {r['conversations']} ({r['dropped']}) | {r['real']:,} | {r['packs']} | "
            f"{r['packed']:.3f} | {r['longest']:.3f} | {r['max']:.3f} | {1 / r['max']:.1f}x | "
            f"{r['conversations'] / r['tokenize_s']:,.0f}, {r['real'] / r['tokenize_s']:,.0f} | "
            f"{r['real'] / r['pack_s']:,.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.results).mkdir(parents=True, exist_ok=True)
    with (Path(a.results) / "packing_cpu.md").open("a") as fh:
        fh.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
