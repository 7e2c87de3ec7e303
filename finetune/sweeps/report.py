"""A local sweep's results: leaderboard.md, leaderboard.csv and sweep.png (metric against each parameter)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from finetune.sweeps.space import Sweep


def ranked(sweep: Sweep, records: list[dict]) -> list[dict]:
    """Finished trials best first (by the sweep's metric and goal), then failed and unfinished ones by number."""
    done = [r for r in records if r["status"] == "finished"]
    done.sort(key=lambda r: (-r["metric"] if sweep.goal == "maximize" else r["metric"], r["trial"]))
    rest = sorted((r for r in records if r["status"] != "finished"), key=lambda r: r["trial"])
    return done + rest


def write(sweep: Sweep, records: list[dict], out: Path) -> None:
    rows = ranked(sweep, records)
    keys = list(sweep.space)
    header = ["rank", "trial", "status", sweep.metric, *keys, "seconds", "output_dir", "error"]
    table = []
    for i, r in enumerate(rows, 1):
        finished = r["status"] == "finished"
        table.append(
            [
                i if finished else "",
                r["trial"],
                r["status"],
                r["metric"] if finished else "",
                *(r["params"].get(k, "") for k in keys),
                r.get("seconds", ""),
                r["output_dir"],
                r.get("error") or "",
            ]
        )
    with (out / "leaderboard.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *table])
    (out / "leaderboard.md").write_text(markdown(sweep, header, table))
    plot(sweep, [r for r in rows if r["status"] == "finished"], out / "sweep.png")


def markdown(sweep: Sweep, header: list[str], table: list[list]) -> str:
    done = [row for row in table if row[2] == "finished"]
    lines = [f"# Sweep {sweep.path.name}: {sweep.method}, {sweep.goal} {sweep.metric}", ""]
    if done:
        best = done[0]
        lines += [
            f"Best: trial {best[1]}, {sweep.metric} = {fmt(best[3])}, "
            + ", ".join(f"{k}={fmt(v)}" for k, v in zip(header[4:-3], best[4:-3]))
            + f" ({best[-2]})",
            "",
        ]
    lines += [f"{len(done)} finished, {len(table) - len(done)} failed or unfinished, of {len(table)} trials.", ""]
    if sweep.overrides:
        lines += ["Every trial with: " + " ".join(f"{k}={v}" for k, v in sweep.overrides.items()), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def plot(sweep: Sweep, done: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(sweep, done)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figure(sweep: Sweep, done: list[dict]):
    """One panel per swept parameter: the metric of every finished trial against that parameter's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(sweep.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
    best = done[0]["trial"] if done else None
    for ax, key in zip(axes[0], keys):
        xs = x_axis(ax, sweep.space[key], [r["params"].get(key) for r in done])
        ys = [r["metric"] for r in done]
        ax.scatter(xs, ys, c=["tab:red" if r["trial"] == best else "tab:blue" for r in done], zorder=3)
        for x, y, r in zip(xs, ys, done):
            ax.annotate(str(r["trial"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)  # losses that differ in the 4th digit stay readable
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.path.name}: {len(done)} finished trials (best in red)")
    fig.tight_layout()
    return fig


def x_axis(ax, dist, xs: list) -> list:
    """Set up the x axis for a parameter and return the trials' x positions. Discrete values (`values: [8, 16]`,
    or any text) get one labelled slot each, in the file's order; a log range gets ticks at 1, 2 and 5 per decade
    labelled plainly (5e-05, 0.0001) with no minor labels, over the whole searched range; an integer range integer
    ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    choices = list(getattr(dist, "choices", ()))
    if choices or any(not isinstance(x, (int, float)) or isinstance(x, bool) for x in xs):
        labels = [fmt(c) for c in choices] or sorted({fmt(x) for x in xs})
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        return [labels.index(fmt(x)) for x in xs]
    if getattr(dist, "log", False) or log_spaced(xs):
        ax.set_xscale("log")
        if getattr(dist, "low", 0) > 0:  # the whole searched range, so ticks fall at 1, 2, 5 x 10^k within it
            ax.set_xlim(dist.low / 1.2, dist.high * 1.2)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=30)
    elif all(isinstance(x, int) for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return xs


def log_spaced(xs: list) -> bool:
    """Positive values spanning more than a factor of 20 (learning rates, ranks) read better on a log axis."""
    pos = [x for x in xs if x > 0]
    return len(pos) == len(xs) > 1 and max(pos) / min(pos) > 20 and not math.isclose(max(pos), min(pos))
