"""Base vs tuned as one table and <run>/benchmarks.json, and what the model card and a sweep read from it.

Metric names are lm_eval's keys without the default filter: `acc`, `acc_norm`, and `exact_match,strict-match`
where a task has named filters (lm_eval's `metric,filter`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finetune.config import UserError
from finetune.runtime import files

RESULTS = "benchmarks.json"


def number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def metrics(task_results: dict) -> dict[str, tuple[float | None, float | None]]:
    """{metric name: (value, stderr)} from one task's lm_eval results (`acc,none`, `acc_stderr,none`, ...)."""
    out = {}
    for key, value in task_results.items():
        if "," not in key or "_stderr," in key or number(value) is None:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        out[name] = (number(value), number(task_results.get(f"{metric}_stderr,{filt}")))
    return out


def rows(base: dict | None, tuned: dict) -> list[dict]:
    """One row per (task, metric): base, tuned, delta (tuned - base), the tuned score's stderr, items scored.
    `base`/`tuned` are runner.evaluate outputs; without a base, base and delta are None."""
    out = []
    for task, res in tuned["results"].items():
        n = (tuned.get("n-samples") or {}).get(task, {}).get("effective")
        before = metrics(base["results"].get(task, {})) if base else {}
        for name, (value, stderr) in metrics(res).items():
            b = before.get(name, (None, None))[0]
            out.append(
                {
                    "task": task,
                    "metric": name,
                    "base": b,
                    "tuned": value,
                    "delta": value - b if b is not None and value is not None else None,
                    "stderr": stderr,
                    "n": n,
                }
            )
    return out


def fmt(v: float | None, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")


def table(table_rows: list[dict], base_label: str, tuned_label: str) -> str:
    """The rows as a fixed-width table, with what base and tuned mean underneath."""
    head = f"{'task':<16} {'metric':<28} {'base':>8} {'tuned':>8} {'delta':>8} {'stderr':>8} {'n':>5}"
    lines = [head] + [
        f"{r['task']:<16} {r['metric']:<28} {fmt(r['base']):>8} {fmt(r['tuned']):>8} "
        f"{fmt(r['delta'], sign=True):>8} {fmt(r['stderr']):>8} {r['n'] or '-':>5}"
        for r in table_rows
    ]
    lines.append(f"base: {base_label}; tuned: {tuned_label}; stderr: the tuned score's (lm_eval's), n: items scored")
    return "\n".join(lines)


def write(run_dir: Path, payload: dict) -> Path:
    return files.write_text(Path(run_dir) / RESULTS, json.dumps(payload, indent=2, default=str) + "\n")


def read(run_dir: Path) -> dict | None:
    """<run>/benchmarks.json, None when the run has none; a damaged one (cut by a kill or a full disk, edited by
    hand) is one error naming it and the fix, not a JSON traceback in export's or training's model card."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("rows", []), list):
            raise ValueError("not evaluate.py's results")
        return saved
    except ValueError as exc:
        raise UserError(
            f"{path} cannot be read ({exc}): score the run again (`python finetune/evaluate.py run={run_dir} "
            "benchmarks.tasks=[...]` rewrites it) or delete the file (model cards then show no benchmarks)"
        ) from None


def card_metadata(run_dir: Path, model_name: str) -> dict:
    """The Hub card metadata (`model-index` through huggingface_hub's EvalResult) for the tuned scores in
    <run>/benchmarks.json; {} when the run has none."""
    from huggingface_hub import EvalResult

    saved = read(run_dir)
    if not saved or not saved.get("rows"):
        return {}
    results = []
    for r in saved["rows"]:
        if r["tuned"] is None:
            continue
        ds = (saved.get("datasets") or {}).get(r["task"]) or {}
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=ds.get("hub_id") or r["task"],
                dataset_name=r["task"],
                dataset_split=ds.get("split"),
                metric_type=r["metric"].split(",")[0],
                metric_name=r["metric"],
                metric_value=round(r["tuned"], 4),
                source_name="lm-evaluation-harness " + str(saved.get("lm_eval", "")),
                source_url="https://github.com/EleutherAI/lm-evaluation-harness",
                metric_args={"n": r["n"], "limit": saved.get("limit"), "chat_template": saved.get("chat_template")},
            )
        )
    return {"model_name": model_name, "eval_results": results} if results else {}


def card_section(run_dir: Path) -> str:
    """A markdown table of base vs tuned for the card body; empty when the run has no benchmarks.json."""
    saved = read(run_dir)
    if not saved or not saved.get("rows"):
        return ""
    lines = [
        "## Benchmarks",
        "",
        f"lm-evaluation-harness {saved.get('lm_eval', '')}, "
        f"{'Llama 2 chat format' if saved.get('chat_template') else 'plain prompts'}"
        + (f", first {saved['limit']} items per task" if saved.get("limit") else "")
        + ".",
        "",
        "| task | metric | base | tuned | delta | stderr | n |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['task']} | {r['metric']} | {fmt(r['base'])} | {fmt(r['tuned'])} | {fmt(r['delta'], True)} | "
        f"{fmt(r['stderr'])} | {r['n']} |"
        for r in saved["rows"]
    ]
    if saved.get("chat_note"):
        lines += ["", saved["chat_note"]]
    return "\n".join(lines) + "\n"


def log_key(task: str, metric: str) -> str:
    """The name a benchmark score gets in metrics.jsonl during training (wandb and TensorBoard show it as
    eval/benchmark/<task>/<metric>, as eval_loss is eval/loss)."""
    return f"eval_benchmark/{task}/{metric}"


def update_card(readme: Path, run_dir: Path) -> bool:
    """Put the run's benchmark results into an existing model card (README.md written by training or export):
    `model-index` in its metadata and the Benchmarks section in its body; everything else stays as written."""
    from huggingface_hub import ModelCard

    readme = Path(readme)
    meta = card_metadata(run_dir, Path(run_dir).name)
    if not readme.is_file() or not meta:
        return False
    card = ModelCard.load(readme)
    card.data.model_name, card.data.eval_results = meta["model_name"], meta["eval_results"]
    text, section = card.text, card_section(run_dir)
    if "\n## Benchmarks\n" in text:  # replace the previous results, up to the next section
        head, rest = text.split("\n## Benchmarks\n", 1)
        tail = rest[rest.index("\n## ") :] if "\n## " in rest else "\n"
        text = head + "\n" + section + tail
    elif "\n## Prompt format" in text:
        text = text.replace("\n## Prompt format", "\n" + section + "\n## Prompt format", 1)
    else:
        text += "\n" + section
    files.write_text(readme, str(ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")))
    return True
