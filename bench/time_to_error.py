"""Time to error: how long a user waits for the one `error:` line of each bad input in the corpus of
tests/unit/test_bad_inputs.py (config values, Hydra's own errors, bad data files, a wrong data field, SFT data
given to DPO, an output_dir that is a file), each as `python finetune/train.py ...` from a cold start.

    python bench/time_to_error.py                           # this tree
    python bench/time_to_error.py --old-rev 048bc46   # and the tree at that commit (git archive), for a before/after
    python bench/time_to_error.py --only hydra,data --no-record   # some groups, printed only
    python bench/time_to_error.py --old-rev 048bc46 --per-group 3  # the first 3 cases of each group

Measured from outside, per case: wall seconds, CPU seconds of the process (getrusage of the reaped child), the
exit code, whether torch was imported before the error (`python -X importtime`) and the error's first line.
Results are appended to bench/results/time_to_error.md with the command, machine, load average and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "time_to_error.md"
ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def cases(work: Path) -> list[tuple[str, str, list[str]]]:
    """(group, name, train.py overrides) for every bad input of the test corpus that train.py can be given."""
    from tests.unit.test_bad_inputs import CONFIG_CORPUS, DATA_CORPUS, HYDRA_CORPUS

    out = [("config", " ".join(o), o) for o, _ in CONFIG_CORPUS]
    out += [("hydra", " ".join(o), o) for o, _ in HYDRA_CORPUS]
    for name, content, error in DATA_CORPUS:
        if error is None:
            continue
        path = work / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        out.append(("data", name, ["data=messages", f"data.path={path}"]))
    tickets = work / "tickets.jsonl"
    tickets.write_text(json.dumps({"ticket_question": "Jammed?", "staff_reply": "Tray 2."}) + "\n")
    out.append(
        (
            "data",
            "wrong data.fields",
            ["data=jsonl", f"data.path={tickets}", "data.fields.prompt=question", "data.fields.response=answer"],
        )
    )
    out.append(("data", "SFT data for DPO", ["recipe=tiny_dpo", "data=self_instruct"]))
    (work / "a_file").write_text("x")
    out.append(("run", "output_dir is a file", [f"output_dir={work / 'a_file'}"]))
    return out


def measure(tree: Path, overrides: list[str], work: Path) -> dict:
    """One cold `python -X importtime finetune/train.py ...` in `tree`: wall, CPU, exit code, torch, error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_CACHE": str(work / "cache")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(tree / "finetune" / "train.py"), *overrides],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and not ln.startswith("import time:")]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), len(lines) - 1)
    first = " ".join(lines[at : at + 2]) if lines and lines[at].endswith(":") else (lines[at] if lines else "")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rc": proc.returncode,
        "torch": "torch" in imported,
        "error": first[:160],
    }


def table(label: str, rows: list[dict]) -> str:
    lines = [
        f"| {label}: group | case | wall s | CPU s | exit | torch imported | first line |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | `{r['case']}` | {r['wall_s']} | {r['cpu_s']} | {r['rc']} | "
            f"{'yes' if r['torch'] else 'no'} | {r['error'].replace('|', '/')} |"
        )
    return "\n".join(lines)


def summary(label: str, rows: list[dict]) -> str:
    wall, cpu = [r["wall_s"] for r in rows], [r["cpu_s"] for r in rows]
    return (
        f"{label}: {len(rows)} cases, wall median {statistics.median(wall):.2f} s (max {max(wall):.2f}), "
        f"CPU median "
        f"{statistics.median(cpu):.2f} s (max {max(cpu):.2f}); exit 2 in {sum(r['rc'] == 2 for r in rows)}; torch "
        f"imported before the error in {sum(r['torch'] for r in rows)}"
    )


def old_tree(rev: str, work: Path) -> Path:
    tree = work / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-rev", help="also measure the tree at this git revision (before)")
    ap.add_argument("--only", default="", help="groups to run: config,hydra,data,run (default: all)")
    ap.add_argument("--per-group", type=int, default=0, help="the first N cases of each group only (default: all)")
    ap.add_argument("--no-record", action="store_true", help=f"print only; do not append to {RESULTS}")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="time_to_error-"))
    try:
        corpus = [c for c in cases(work) if not args.only or c[0] in args.only.split(",")]
        if args.per_group:
            corpus = [c for c in corpus if [d[0] for d in corpus].index(c[0]) + args.per_group > corpus.index(c)]
        trees = [(f"before ({args.old_rev})", old_tree(args.old_rev, work))] if args.old_rev else []
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        trees.append((f"after ({rev.stdout.strip() or 'this tree'})", ROOT))
        report = [
            f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"`python bench/time_to_error.py {' '.join(sys.argv[1:])}` on {platform.node()} "
            f"({os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}), "
            f"python {platform.python_version()}",
            "",
        ]
        for label, tree in trees:
            rows = []
            for group, name, overrides in corpus:
                r = {"group": group, "case": name, **measure(tree, overrides, work)}
                print(f"{label} {group} {name}: {r['wall_s']} s wall, {r['cpu_s']} s CPU, exit {r['rc']}", flush=True)
                rows.append(r)
            report += [f"**{summary(label, rows)}**", "", table(label, rows), ""]
        text = "\n".join(report) + "\n"
        print(text)
        if not args.no_record:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            head = (
                ""
                if RESULTS.is_file()
                else "# Time to error: bad inputs through `finetune/train.py`\n\n"
                + "Written by `bench/time_to_error.py` (read its docstring for what is measured).\n\n"
            )
            with RESULTS.open("a") as fh:
                fh.write(head + text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
