"""``aicp bench --routers``: how its CPU part's pairs become the judged ratio, and the wake-up count it prints (no routers started)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from aicp.lab.bench import cluster as bench_cluster


def _run(cpu_ms: float, lost: int = 0) -> dict[str, Any]:
    return {"throughput_per_s": 160.0, "latency_ms": {"p50": 50.0, "p99": 100.0}, "router_cpu_ms_per_task": cpu_ms,
            "router_cpu_ms_per_task_gross": cpu_ms + 0.1, "router_idle_cpu_percent": 2.0, "lost": lost, "errors": None, "noise": None}


def _pair(local: float, cross: float, lost: int = 0) -> dict[str, Any]:
    lr, cr = _run(local), _run(cross, lost)
    return {"local": local, "cross": cross, "local_gross": local + 0.1, "cross_gross": cross + 0.1, "ratio": cross / local,
            "ratio_gross": (cross + 0.1) / (local + 0.1), "lost": lost, "by_router": {}, "noise": {}, "runs": {"local": lr, "cross": cr}}


def _summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"routers": 3, "split": [6, 4, 2], "strategy": "least_loaded", "single": _run(0.8), "cluster": {**_run(1.0), "cross_router_share": 0.3},
            **bench_cluster.cpu_summary(pairs)}


def test_the_judged_ratio_is_the_median_pair_and_the_table_shows_that_pair(capsys: pytest.CaptureFixture[str]) -> None:
    pairs = [_pair(1.0, 1.7), _pair(1.0, 1.4), _pair(0.8, 1.16)]  # ratios 1.7, 1.4, 1.45
    s = _summary(pairs)
    assert s["cpu_median_ratio"] == pytest.approx(1.45)
    assert s["cpu_local"]["router_cpu_ms_per_task"] == 0.8 and s["cpu_cross"]["router_cpu_ms_per_task"] == 1.16
    assert all("runs" not in p for p in s["cpu_pairs"])
    assert bench_cluster.report(s) == 0
    assert s["verdicts"][0]["pass"] and s["cpu_ratio_cross_over_local"] == pytest.approx(1.45)
    assert "median of 3 pairs: 1.70, 1.40, 1.45" in capsys.readouterr().out


def test_a_task_lost_in_a_pair_outside_the_table_fails_the_run() -> None:
    s = _summary([_pair(1.0, 1.7, lost=1), _pair(1.0, 1.4), _pair(0.8, 1.16)])  # the lost one is not the median pair
    assert bench_cluster.report(s) == 1
    assert s["verdicts"][2] == {"check": "no task lost", "pass": False, "measured": "lost 1"}


def test_wakeups_count_the_sleeps_of_a_process() -> None:
    proc = SimpleNamespace(popen=SimpleNamespace(pid=os.getpid()))
    before = bench_cluster.process_wakeups(proc)  # type: ignore[arg-type]
    for _ in range(5):
        time.sleep(0.002)
    assert bench_cluster.process_wakeups(proc) - before >= 5  # type: ignore[arg-type]
