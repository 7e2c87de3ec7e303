"""Tokenizing at scale: conversations/s and peak memory of `prepare.py` (the streaming, multi-process path)
against the in-memory single-process path it replaced, on synthetic conversations and the bundled real sets.

    python bench/data_throughput.py --sizes 10000,100000 --real          # new and old arms
    python bench/data_throughput.py --sizes 1000000 --arms new           # the old path needs ~80 KB a conversation
    python bench/data_throughput.py --sizes 2000 --arms new,old --no-record   # a smoke run
    python bench/data_throughput.py --sizes 20000 --arms at:REV1,at:REV2,at:REV1,at:REV2   # two commits, alternating

Each arm is one command from a cold start into an empty cache, as a user runs it (interpreter start included):
  new  `python finetune/prepare.py data=... data.max_length=1024` (this tree), filling the tokenized cache
  old  the tree at `--old-rev` (git archive): the same config composed and checked (`checks.before_weights`),
       then its `data.load(...)` filling its cache: prepare.py's steps on the old data path
  at:<rev>  `finetune/prepare.py` of the tree at commit <rev> (git archive), as `new`
Measured from outside: wall time; tokens/s (the kept examples' tokens, from the cache's stats.json); the size of
the cache on disk; CPU seconds of the whole process tree (getrusage of the reaped children);
peak memory of the process tree: the sum of PSS (shared pages split between the processes that map them, so
forked workers are not double counted; sampled every 2 s) and the largest single-process RSS (every 0.25 s, and
the kernel's own maximum of any reaped process). Results are
appended to bench/results/data_throughput.md (+ .jsonl) with the machine, load average and date.

Synthetic conversations: 2 user/assistant turns of random whole-word Llama pieces, ~770 tokens each
(52/325/40/325 words, +-20%), deterministic (seed 0); written once under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "ff809cd"  # the last commit with the in-memory path (finetune/data/load.py `tokenized`)
REAL = {
    "oasst": "tiny_qlora",
    "self_instruct": "tiny_qlora",
    "orca_dpo": "tiny_dpo",
    "oasst_pairs": "tiny_dpo",
    "hh_rlhf": "tiny_dpo",
}  # data config -> the recipe that trains on it (sft or dpo)
OLD_DRIVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from hydra import compose, initialize_config_dir
from finetune import config
from finetune.data import load as data
from finetune.model.tokenizer import load_tokenizer
from finetune.training import checks
config.register()
with initialize_config_dir(config_dir=sys.argv[1] + "/configs", version_base="1.3"):
    cfg = checks.before_weights(compose(config_name="train", overrides=sys.argv[2:]))  # as prepare.py does
p = data.load(cfg.data, load_tokenizer(cfg.model), cfg.trainer.kind)
print(f"data: {cfg.data.name}: {p.stats.summary()}", flush=True)
"""


def synthetic(n: int, work: Path) -> Path:
    path = work / f"synthetic-{n}.jsonl"
    if path.is_file():
        return path
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
    vocab = [
        p[1:]
        for p in map(sp.id_to_piece, range(sp.get_piece_size()))
        if p.startswith("▁") and p[1:].isalpha() and len(p) > 3
    ]  # whole words: one token each
    rng = random.Random(0)
    words = [rng.choice(vocab) for _ in range(1 << 20)]

    def text(k: int) -> str:
        k = rng.randint(int(k * 0.8), int(k * 1.2))
        at = rng.randrange(len(words) - k)
        return " ".join(words[at : at + k])

    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for _ in range(n):
            turns = [("user", 52, "?"), ("assistant", 325, "."), ("user", 40, "?"), ("assistant", 325, ".")]
            f.write(json.dumps({"messages": [{"role": r, "content": text(k) + end} for r, k, end in turns]}) + "\n")
    tmp.rename(path)
    return path


def measure(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run `cmd`; wall s, CPU s of the tree, peak tree PSS and largest RSS (bytes), its output. RSS is read every
    0.25 s; PSS (smaps_rollup: the kernel walks the page tables, ~30 ms a process) every 2 s."""
    import threading

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    top = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    tick = 0
    while proc.poll() is None:
        pss = 0
        try:
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                peak_rss = max(peak_rss, p.memory_info().rss)
                if tick % 8 == 0:
                    rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
                    pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) * 1024
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, AttributeError):
                continue
        peak_pss = max(peak_pss, pss)
        tick += 1
        time.sleep(0.25)
    reader.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    kernel = after.ru_maxrss * 1024 if after.ru_maxrss > before.ru_maxrss else 0  # a max over all children ever
    return {
        "rc": proc.returncode,
        "wall_s": time.time() - start,
        "cpu_s": cpu,
        "peak_pss": peak_pss,
        "peak_rss": max(peak_rss, kernel),
        "out": "".join(out),
    }


def old_tree(rev: str, work: Path) -> Path:
    root = work / f"old-{rev}"
    if not root.is_dir():
        tmp = work / f"old-{rev}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", rev, "finetune", "configs", "recipes", "data/llama2-tokenizer"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(root)
    return root


def run_arm(arm: str, overrides: list[str], work: Path, rev: str) -> dict:
    cache = work / f"cache-{arm}"
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache: every run tokenizes
    env = {
        **os.environ,
        "FINETUNE_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if arm == "new" or arm.startswith("at:"):  # at:<rev>: prepare.py of the tree at that commit
        tree = ROOT if arm == "new" else old_tree(arm[3:], work)
        r = measure([sys.executable, str(tree / "finetune/prepare.py"), *overrides], tree, env)
    else:
        old = old_tree(rev, work)
        r = measure([sys.executable, "-c", OLD_DRIVER, str(old), *overrides], old, env)
    r["disk"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    r["tokens"] = sum(sum(json.loads(f.read_text())["lengths"]) for f in cache.rglob("stats.json"))
    shutil.rmtree(cache, ignore_errors=True)
    m = re.search(r"data: \S+: (\d+) examples \((\d+) eval\) from (\d+) records[^\n]*tokenized cache: miss", r["out"])
    if r["rc"] != 0 or not m:  # (a progress bar may share the line: the match starts at "data:")
        raise SystemExit(f"{arm} {' '.join(overrides)} failed ({r['rc']}):\n{r['out'][-3000:]}")
    r["examples"], r["records"], r["data_line"] = int(m.group(1)), int(m.group(3)), m.group(0)
    return r


CEILING = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import sentencepiece as spm
from finetune.data.chat_format import encode_dialog
sp = spm.SentencePieceProcessor(model_file=sys.argv[1] + "/data/llama2-tokenizer/tokenizer.model")
convs = [json.loads(line)["messages"] for line, _ in zip(open(sys.argv[2]), range(1500))]
start = time.time()
for messages in convs:
    encode_dialog(sp, messages)
print(len(convs) / (time.time() - start))
"""


def ceiling(work: Path) -> str:
    """The speedup two processes get here now: the Meta-exact encoder alone on 1,500 synthetic conversations in
    one process, then in two at once (other users' load and shared caches make it < 2)."""
    path, cmd = synthetic(10000, work), [sys.executable, "-c", CEILING, str(ROOT)]
    solo = float(subprocess.run(cmd + [str(path)], capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen(cmd + [str(path)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pair = sum(float(p.communicate()[0]) for p in procs)
    row = (
        f"| encoder alone (the ceiling now) | 1 process / 2 at once | 1,500 | | | {solo:,.0f} / {pair:,.0f} "
        f"(x{pair / solo:.2f}) | | | | | | |"
    )
    print(row, flush=True)
    return row


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="synthetic conversation counts, comma-separated")
    ap.add_argument("--real", action="store_true", help="also the bundled real sets")
    ap.add_argument(
        "--arms",
        default="new,old",
        help="new (this tree), old (--old-rev's in-memory path), "
        "at:<rev> (prepare.py of the tree at that commit); arms repeat and run in the order given",
    )
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--num-proc", type=int, default=None, help="data.num_proc for the new arm (default: all cores)")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench" / "data_throughput"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "data_throughput.md"))
    ap.add_argument("--no-record", action="store_true", help="print only")
    ap.add_argument(
        "--ceiling",
        action="store_true",
        help="first measure the speedup this machine gives now: "
        "the encoder alone in 1 process, then in 2 processes at once",
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = [
        (f"synthetic {int(n):,}", ["data=messages", f"data.path={synthetic(int(n), work)}", "data.max_length=1024"])
        for n in filter(None, args.sizes.split(","))
    ]
    if args.real:
        cases += [
            (f"{name} (bundled)", [f"recipe={recipe}", f"data={name}", f"data.path={ROOT / _config_path(name)}"])
            for name, recipe in REAL.items()
        ]
    header = (
        f"\n### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {machine()}\n\n"
        f"`python bench/data_throughput.py {' '.join(sys.argv[1:])}` (old = `{args.old_rev}`; load average "
        f"at start {os.getloadavg()[0]:.1f})\n\n"
        "| data | arm | records | examples | wall s | conv/s (wall) | tokens/s (wall) | CPU s | conv per CPU s "
        "| peak PSS (tree) | largest RSS | cache on disk |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    print(header, flush=True)
    record(args, header)
    if args.ceiling:
        record(args, ceiling(work))
    for label, overrides in cases:
        for arm in args.arms.split(","):
            extra = [f"data.num_proc={args.num_proc}"] if arm != "old" and args.num_proc else []
            r = run_arm(arm, overrides + extra, work, args.old_rev)
            row = (
                f"| {label} | {arm} | {r['records']:,} | {r['examples']:,} | {r['wall_s']:.1f} | "
                f"{r['records'] / r['wall_s']:,.0f} | {r['tokens'] / r['wall_s']:,.0f} | {r['cpu_s']:.1f} | "
                f"{r['records'] / r['cpu_s']:,.1f} | {r['peak_pss'] / 2**30:.2f} GiB | "
                f"{r['peak_rss'] / 2**30:.2f} GiB | {r['disk'] / 2**30:.2f} GiB |"
            )
            print(row, flush=True)
            record(
                args,
                row,
                {
                    "date": datetime.now(timezone.utc).isoformat(),
                    "machine": machine(),
                    "data": label,
                    "arm": arm,
                    "overrides": overrides + extra,
                    **{k: v for k, v in r.items() if k != "out"},
                },
            )


def record(args, line: str, entry: dict | None = None) -> None:
    """Each row as it is measured (a long run stopped half-way keeps what it measured)."""
    if args.no_record:
        return
    with open(args.results, "a") as f:
        f.write(line + "\n")
    if entry:
        with open(Path(args.results).with_suffix(".jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")


def _config_path(name: str) -> str:
    """The repository file a data config names (`path: ${bundled:data/...}`)."""
    value = next(
        ln.split(":", 1)[1].split("#")[0].strip()
        for ln in (ROOT / "configs" / "data" / f"{name}.yaml").read_text().splitlines()
        if ln.startswith("path:")
    )
    return value.removeprefix("${bundled:").removesuffix("}")


if __name__ == "__main__":
    main()
