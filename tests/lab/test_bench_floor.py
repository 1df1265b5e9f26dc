"""CPU per task by role and the signature floor in ``aicp bench``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from aicp.lab.bench import floor


def test_the_floor_counts_two_signs_and_four_verifies_on_every_hop_and_two_at_the_edge() -> None:
    costs = {"sign_us": 20.0, "verify_us": 50.0}
    assert floor.signature_floor("every-hop", costs)["floor_us"] == 2 * 20.0 + 4 * 50.0
    assert floor.signature_floor("edge", costs)["floor_us"] == 2 * 20.0 + 2 * 50.0


def test_signature_costs_are_positive_and_verify_costs_more_than_sign() -> None:
    costs = floor.signature_costs(repeat=3, number=200)
    assert 0.0 < costs["sign_us"] < costs["verify_us"]


def test_cpu_per_task_divides_each_role_by_the_completed_tasks() -> None:
    cpu = {"router": {"cpu_s": 0.3}, "agents": {"cpu_s": 0.2}, "loadgen": {"cpu_s": 0.1}}
    out = floor.cpu_per_task(cpu, 1000, floor_us=300.0)
    assert out["by_role_us"] == pytest.approx({"router": 300.0, "agents": 200.0, "loadgen": 100.0})
    assert out["total_us"] == pytest.approx(600.0) and out["ratio_to_floor"] == pytest.approx(2.0)
    assert floor.cpu_per_task(cpu, 0) == {"completed": 0}
    assert "2.00x the signature floor" in floor.format_cpu("router", out)


def test_merge_costs_keeps_the_least_disturbed_measurement() -> None:
    assert floor.merge_costs({"sign_us": 30.0, "verify_us": 80.0}, {"sign_us": 25.0, "verify_us": 90.0}) == {"sign_us": 25.0, "verify_us": 80.0}


def test_annotate_summary_holds_the_relay_to_the_every_hop_floor() -> None:
    trial = {"cpu": {"router": {"cpu_s": 1.0}}, "completed": 1000}
    summary = {"router": dict(trial), "relay": {"cpu": {"relay": {"cpu_s": 1.0}}, "completed": 1000}}
    lines = floor.annotate_summary(summary, {"sign_us": 10.0, "verify_us": 20.0}, "edge")
    assert summary["signature_floor"]["floor_us"] == 60.0
    assert summary["router"]["cpu_per_task"]["floor_us"] == 60.0
    assert summary["relay"]["cpu_per_task"]["floor_us"] == 100.0
    assert len(lines) == 3 and lines[0].startswith("signature floor")


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.load
def test_a_short_live_bench_reports_cpu_per_task_for_every_role_and_alternates_router_and_relay(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "aicp", "bench", "--duration", "1", "--warmup", "0.5", "--agents", "2", "--agent-procs", "1",
           "--concurrency", "8", "--baseline", "--baseline-rounds", "2", "--out", str(tmp_path), "--json", str(tmp_path / "s.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    per_task = summary["router"]["cpu_per_task"]
    assert set(per_task["by_role_us"]) == {"router", "agents", "loadgen"}  # the idle relay's agents are not charged to the router
    assert all(us > 0 for us in per_task["by_role_us"].values())
    assert per_task["ratio_to_floor"] == pytest.approx(per_task["total_us"] / summary["signature_floor"]["floor_us"])
    assert "x the signature floor" in proc.stdout
    # the baseline: two rounds, router then relay, then relay then router; judged by the median of the rounds' ratios
    rounds = summary["baseline"]["rounds"]
    assert [r["order"] for r in rounds] == [["router", "relay"], ["relay", "router"]]
    assert summary["relay_ratio"] == pytest.approx(statistics.median(r["router_over_relay"] for r in rounds))
    assert summary["relay_ratio_pooled"] == pytest.approx(summary["router"]["throughput_per_s"] / summary["relay"]["throughput_per_s"])
    assert summary["router"]["slices"] == 2 and summary["router"]["completed"] == sum(r["router"]["completed"] for r in rounds)
    assert set(summary["relay"]["cpu_per_task"]["by_role_us"]) == {"relay", "agents", "loadgen"}
    assert summary["lost_all_trials"] == 0
    # machine noise, per trial and over the run (steal is None off Linux)
    assert {"steal_share", "stalls", "stall_max_ms"} <= set(summary["noise"]) and summary["router"]["noise"]["seconds"] > 0
    assert "machine over the whole run:" in proc.stdout


def test_goals_judge_the_ratio_the_relay_and_the_half_capacity_latency() -> None:
    summary = {"router": {"cpu_per_task": {"ratio_to_floor": 1.4}}, "relay_ratio": 0.9,
               "router_at_half": {"latency_ms": {"p99": 12.0}, "offered_rate_per_s": 1500.0}}
    rows = {check.split(":")[1].strip()[:10]: ok for check, ok, _ in floor.goals(summary)}
    assert list(rows.values()) == [True, False, False]
    empty = floor.goals({})
    assert [ok for _, ok, _ in empty] == [None, None]


def test_the_verify_pool_bench_completes_every_task_inline_and_on_threads() -> None:
    import asyncio

    from aicp.lab.bench import verify_pool

    for threads in (0, 2):
        cpu_us, wall_us = asyncio.run(verify_pool.one_round(threads, 200))
        assert cpu_us > 0 and wall_us > 0


@pytest.mark.live
@pytest.mark.load
def test_a_bench_terminated_with_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    """Its router and agents run in their own sessions; killed under ``timeout``, the bench left them running."""
    import os
    import signal
    import time

    import psutil

    cmd = [sys.executable, "-m", "aicp", "bench", "--duration", "60", "--warmup", "0.5", "--agents", "2", "--agent-procs", "1",
           "--rate", "20", "--out", str(tmp_path)]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30.0
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and len(children) < 3:  # router, agents, load generator
            time.sleep(0.2)
            children = psutil.Process(bench.pid).children()
        assert len(children) >= 3, "the bench did not start its fleet"
        time.sleep(0.5)
        os.kill(bench.pid, signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.cmdline()[:4] for p in alive]
    finally:
        if bench.poll() is None:
            bench.kill()
