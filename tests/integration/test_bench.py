"""The benchmarks run here: the throughput benchmark end to end on the tiny model (CPU), and packing efficiency on
the bundled conversations (the issue's target: >= 0.95)."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_throughput_smoke_runs_baseline_and_ours_and_gates_them(tmp_path):
    import train_throughput

    train_throughput.main(["--smoke", "--arms", "ours,baseline", "--results", str(tmp_path)])
    run = json.loads((tmp_path / "throughput.jsonl").read_text().splitlines()[-1])
    assert [a["arm"] for a in run["arms"]] == ["baseline", "ours"]  # the baseline always runs first
    for a in run["arms"]:
        assert a["tokens_per_s"] > 0 and len(a["losses"]) == 3 and all(g > 0 for g in a["grad_norms"])
    assert run["gates"]["ours"].startswith("pass"), run["gates"]
    table = (tmp_path / "throughput.md").read_text()
    assert "| baseline |" in table and "| ours |" in table and "CPU" in table and "--smoke" in table


def test_packing_efficiency_on_bundled_oasst(tmp_path):
    import packing_efficiency

    (row,) = packing_efficiency.main(["--max-length", "2048", "--results", str(tmp_path)])
    assert row["packed"] >= 0.95
    assert row["packed"] > row["longest"] > row["max"]
    assert "| 2048 |" in (tmp_path / "packing_cpu.md").read_text()
