"""Tokenized data at any size: on every core, in memory that does not grow with the data, written to Arrow as it
is made. `load` and prepare.py build through here; SFT conversations and DPO pairs alike.

  1 scan      this process reads every record once (sources -> adapters -> checks; the first bad record stops
              here, named by file:line) and keeps only counts and a resume point every STEP examples
  2 order     which examples are used, held out and in what order, from their count alone (`examples.order`):
              the shuffle, `data.max_samples` cap and split of the in-memory path, for the same seed
  3 tokenize  `Dataset.map(num_proc=...)` over the shares (a resume point each): each process takes a run of
              consecutive shares, reads on from the first one's resume point, encodes the used examples with the
              Meta-exact encoder (`ENCODERS[kind]`) and datasets writes each share's rows to Arrow as one record
              batch, in file order, each row with its training position; each share's counts and first examples
              (preflight sample, sample prompts) go beside the rows in a small JSON file
  4 finish    row indices in training order (8 bytes a row) and token lengths, from the `position` column and
              the Arrow list offsets: the tokens themselves are not read back
The rows stay in file order on disk; `read` gives them in training order through an index (`Dataset.select`).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from finetune.config.methods import METHODS
from finetune.data import examples, pairs, sft, sources, unpaired
from finetune.data.stats import DataError, Stats
from finetune.runtime import children, console

# the encoders a method's record names: how its examples become token rows (check_examples, rows, features, lengths,
# nothing_left); ENCODERS: trainer.kind -> its encoder
ENCODER_MODULES = {"sft": sft, "pairs": pairs, "unpaired": unpaired}
ENCODERS = {name: ENCODER_MODULES[m.encoder] for name, m in METHODS.items()}
PREFLIGHT_SAMPLE = 64  # conversations whose inference prompts the preflight re-encodes
HEAD = 256  # examples (held-out first) kept for sample prompts
STEP = 1000  # examples between resume points: the finest share of the reading a process is given
MIN_PER_PROCESS = 1000  # used examples a process must have to be worth starting (a start costs ~0.5 s)
COUNTS = ("dropped_too_long", "truncated_turns", "cut", "chunked")


@dataclass
class Source:
    """One data source (data.path or data.eval_path) after the scan: its example count and resume points."""

    path: str
    n: int = 0
    marks: list = field(default_factory=list)  # (sources.Position of a record, index of its first example)


def processes(dcfg, used: int) -> int:
    """`data.num_proc`, or every core this process may run on (what SLURM or taskset gave it) but no more than
    one per MIN_PER_PROCESS used examples. Each process reads at least STEP examples (see `tokenize`)."""
    return dcfg.num_proc or max(1, min(len(os.sched_getaffinity(0)), used // MIN_PER_PROCESS))


def build(dcfg, sp, kind: str, folder: Path, final: str = "", progress: bool = False) -> None:
    """Tokenize `dcfg`'s data for `kind` into `folder`: rows/ per source, order.npz, layout.json, head.json and
    stats.json (last: the folder is complete); `final` is where the folder will live (stats.cache_dir).
    DataError for bad data. `progress`: say what happens and show datasets' progress bar (prepare.py)."""
    say = console.info if progress else (lambda msg: None)
    stats, folder = Stats(), Path(folder)
    say(f"data: reading {dcfg.path}" + (f" and {dcfg.eval_path}" if dcfg.eval_path else ""))
    sources = [scan(dcfg, path, kind, stats) for path in (dcfg.path, dcfg.eval_path) if path]
    used = [examples.order(src.n, dcfg) for src in sources]  # example indices in training order, capped
    n_eval = len(used[1]) if dcfg.eval_path else int(round(len(used[0]) * dcfg.eval_fraction))
    procs = min(processes(dcfg, sum(map(len, used))), max(len(src.marks) for src in sources))  # a share each
    say(
        f"data: {sum(src.n for src in sources)} examples from {stats.records} records; tokenizing "
        f"{sum(map(len, used))} on {procs} process{'es' if procs > 1 else ''}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    with console.datasets_bars(progress):
        made = [
            tokenize(dcfg, sp, kind, src, use, folder / "rows" / name, procs)
            for name, src, use in zip(("train", "eval"), sources, used)
        ]
    splits = {"train": "train", "eval": "eval" if dcfg.eval_path else "train"}  # split -> the rows it is from
    layout = {"rows": {name: files for name, (files, _, _) in zip(("train", "eval"), made)}, "splits": splits}
    order, lengths = _order(folder, layout, kind, None if dcfg.eval_path else n_eval)
    stats.examples, stats.eval_examples = len(order["train"]) + len(order["eval"]), len(order["eval"])
    stats.lengths = [int(x) for split in ("train", "eval") for x in lengths[splits[split]][order[split]]]
    for counts in (c for _, _, share_counts in made for c in share_counts):
        for key in COUNTS:
            setattr(stats, key, getattr(stats, key) + counts[key])
        for reason, n in counts["skipped"].items():
            stats.skip(reason, n)
    if not len(order["train"]):
        raise DataError(ENCODERS[kind].nothing_left(dcfg))
    heads = [h for _, h, _ in made]  # {position: example} of each source's first HEAD positions
    held_out = [heads[-1][p] for p in range(min(HEAD, n_eval))]  # eval_fraction: positions 0.. of data.path
    train = [heads[0][p] for p in range(0 if dcfg.eval_path else len(held_out), min(HEAD, len(used[0])))]
    np.savez(folder / "order.npz", **order)
    (folder / "layout.json").write_text(json.dumps(layout))
    (folder / "head.json").write_text(
        json.dumps(
            {
                "sample": [heads[0][p] for p in range(min(PREFLIGHT_SAMPLE, len(used[0])))],
                "head": (held_out + train)[:HEAD],
            },
            ensure_ascii=False,
        )
    )
    stats.cache_dir = final
    (folder / "stats.json").write_text(json.dumps(asdict(stats)))


def _order(folder: Path, layout: dict, kind: str, n_eval: int | None) -> tuple[dict, dict]:
    """({split: row indices in training order}, {rows: tokens per row}) from each row's `position` column and
    list offsets (the tokens are not read). `n_eval`: the first n_eval positions of the train rows are held out."""
    order, lengths = {}, {}
    for name, files in layout["rows"].items():
        rows = _rows(folder / "rows" / name, files)
        position = rows.data.column("position").to_numpy()
        order[name] = np.argsort(position, kind="stable")  # a document's pieces keep their order
        lengths[name] = _lengths(rows, kind)
        if n_eval is not None:  # one source: positions below n_eval are the eval split
            cut = int(np.searchsorted(position[order[name]], n_eval))
            order["eval"], order["train"] = order[name][:cut], order[name][cut:]
    return order, lengths


def scan(dcfg, path: str, kind: str, stats: Stats) -> Source:
    """Read and check every record of `path` once, holding none: the example count and resume points."""
    src, last, skipped = Source(path), None, sum(stats.skipped.values())
    check = ENCODERS[kind].check_examples
    for ex, position in examples.adapted(dcfg, stats, path):
        check([ex], dcfg)  # SFT data for DPO (or pairs for SFT) stops at the first such example
        if position != last and src.n >= len(src.marks) * STEP:
            src.marks.append((position, src.n))
        last = position
        src.n += 1
    if not src.n:
        raise DataError(examples.none_read(dcfg, stats, path, sum(stats.skipped.values()) - skipped))
    return src


def tokenize(dcfg, sp, kind: str, src: Source, used: np.ndarray, out: Path, procs: int):
    """Encode the `used` examples of `src` (indices in file order, in training order) on `procs` processes into
    Arrow files under `out`: (file names, {position: example} for the first HEAD positions, each share's counts).

    The work is one share per resume point (~STEP examples); `Dataset.map` hands each process a run of
    consecutive shares and writes what each share returns as one Arrow record batch.

    `Dataset.from_generator(num_proc=)` with one run of shares per process (a local reader, not `_READERS`) was
    measured against this on a 2-core CPU box (bench/results/data_build_pool_cpu.md; `python
    bench/data_throughput.py --sizes 10000,20000 --arms at:5fe286d,at:e2cb69e,at:5fe286d,at:e2cb69e`): the same
    Arrow rows, 7-13% more CPU s (20k: 99.7/106.3 s vs 94.5/93.0), slower wall time at 20k (229/277 s vs
    185/250), 0.07-0.18 GiB less peak PSS; it also needs two cases of its own (datasets wraps a worker's
    DataError in DatasetGenerationError; a split of zero rows gives no Dataset). So `map` stays."""
    from datasets import Dataset

    position = np.full(src.n, -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    starts = [e for _, e in src.marks] + [src.n]
    shares = Dataset.from_dict(
        {
            "first": starts[:-1],
            "start": [list(m) for m, _ in src.marks],
            "position": [position[a:b] for a, b in zip(starts, starts[1:])],
        }
    )
    scratch = out.with_name(out.name + ".scratch")
    (scratch / "side").mkdir(parents=True)
    procs = min(procs, len(shares))
    gc.freeze()  # forked processes share this one's objects; the collector would write to (and so copy) them all
    try:
        with children.bound():  # the pool's workers and datasets' queue manager die with this process (kill -9)
            rows = shares.map(
                _encode,
                batched=True,
                batch_size=1,
                num_proc=procs if procs > 1 else None,
                desc=f"data: tokenizing {out.name} in shares of ~{STEP} examples",
                features=_features(kind),
                remove_columns=shares.column_names,
                fn_kwargs={
                    "dcfg": dcfg,
                    "sp": sp,
                    "kind": kind,
                    "path": src.path,
                    "side": str(scratch / "side"),
                    "build": uuid.uuid4().hex,
                },
                cache_file_name=str(scratch / "rows.arrow"),
                new_fingerprint=uuid.uuid4().hex,
            )
    finally:
        gc.unfreeze()
    out.mkdir()
    files = [f"{i:05d}.arrow" for i in range(len(rows.cache_files))]
    for name, cached in zip(files, rows.cache_files):
        os.replace(cached["filename"], out / name)
    sides = [json.loads(p.read_text()) for p in sorted((scratch / "side").glob("*.json"))]
    shutil.rmtree(scratch)
    _READERS.clear()
    head = {int(p): ex for side in sides for p, ex in side["head"].items()}
    return files, head, [side["counts"] for side in sides]


_READERS: dict = {}  # (build, path) -> (examples iterator, index of its next example), in a tokenizing process


def _encode(share: dict, dcfg, sp, kind: str, path: str, side: str, build: str) -> dict:
    """The token rows of one share (in a tokenizing process): its used examples encoded, each row tagged with
    its training position; the share's counts and head examples go to `side`. A process reading consecutive
    shares keeps its reader open, so gzip and .json sources are decompressed and parsed once per process."""
    first, start, position = share["first"][0], sources.Position(*share["start"][0]), share["position"][0]
    reading, at = _READERS.pop((build, path), (None, -1))
    if at != first:
        if reading is not None:
            reading.close()
        reading = examples.adapted(dcfg, Stats(), path, start)
    stats, head, cols = Stats(), {}, {name: [] for name in _features(kind)}
    for p in position:
        ex, _ = next(reading)
        if p < 0:
            continue
        if p < HEAD:
            head[p] = ex
        for row in ENCODERS[kind].rows(ex, sp, dcfg, stats, p):
            for name, value in row.items():
                cols[name].append(value)
            cols["position"].append(p)
    _READERS[(build, path)] = (reading, first + len(position))
    counts = {key: getattr(stats, key) for key in (*COUNTS, "skipped")}
    Path(side, f"{first:012d}.json").write_text(json.dumps({"counts": counts, "head": head}))
    return cols


def _features(kind: str):
    """The column types the in-memory path gets from `Dataset.from_dict` (datasets stores input_ids as int32)."""
    from datasets import Features, Value

    return Features({**ENCODERS[kind].features(), "position": Value("int64")})


def _lengths(rows, kind: str) -> np.ndarray:
    """Tokens per row (pairs: prompt + the longer answer), from the list offsets only."""
    import pyarrow.compute as pc

    def n(col: str) -> np.ndarray:
        return pc.list_value_length(rows.data.column(col)).to_numpy(zero_copy_only=False)

    return ENCODERS[kind].lengths(n)


def _rows(folder: Path, files: list[str], in_memory: bool = False):
    """The Arrow rows of one source, in file order."""
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(str(folder / f), in_memory=in_memory) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def read(folder: Path, in_memory: bool = False):
    """(train, eval or None, stats, sample, head) of a built folder, the rows in training order."""
    folder = Path(folder)
    layout = json.loads((folder / "layout.json").read_text())
    order = np.load(folder / "order.npz")
    rows = {name: _rows(folder / "rows" / name, files, in_memory) for name, files in layout["rows"].items()}
    train, held_out = (
        rows[layout["splits"][split]].select(order[split], keep_in_memory=True).remove_columns("position")
        if len(order[split])
        else None
        for split in ("train", "eval")
    )
    heads = json.loads((folder / "head.json").read_text())
    return train, held_out, Stats(**json.loads((folder / "stats.json").read_text())), heads["sample"], heads["head"]
