"""scale_100k and its crash storm, at 2,000 agents: the same shape, small enough for the suite.

The 100,000-agent runs themselves are measured outside the suite (docs/SIMULATOR.md, "Scale")."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import load, run

from aicp.sim.scenario import CrashFault


def small(name: str, n: int = 2000) -> dict[str, object]:
    """The scenario at ``n`` agents with the same load per agent and the same share of them crashing."""
    s = load(name)
    share = n / s.agents[0].count
    over: dict[str, object] = {
        "agents.0.count": n,
        "workload.0.arrival.rate_per_s": s.workload[0].arrival.rate_per_s * share,  # type: ignore[union-attr]
    }
    for i, f in enumerate(s.faults):
        assert isinstance(f.agents, int)
        over[f"faults.{i}.agents"] = int(f.agents * share)
    return over


def test_scale_100k_is_what_the_issue_asks() -> None:
    s = load("scale_100k")
    assert sum(g.count for g in s.agents) == 100_000 and s.max_tasks == 1_000_000
    rate = sum(w.arrival.rate_per_s for w in s.workload)  # type: ignore[union-attr]
    assert rate * s.duration_s > s.max_tasks  # max_tasks, not the clock, ends the arrivals
    assert len(s.strategies) == 6
    storm = load("scale_100k_crash")
    (crash,) = storm.faults
    assert isinstance(crash, CrashFault) and crash.agents == 10_000 and crash.over_s == 1.0


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded"])
def test_crash_storm_at_scale_shape_does_not_stall(strategy: str) -> None:
    s = load("scale_100k_crash", **small("scale_100k_crash"))
    r = run(s, strategy)
    summ, tl = r.summary, r.timelines
    assert summ["error"] is None and summ["lost_total"] == 0 and summ["ended"] == summ["submitted"]
    assert summ["router"]["agents_lost"] == 200
    t, up = tl["sample_t_s"], tl["agents_up"]
    assert up[(t >= 22) & (t <= 29)].tolist() == [1800] * 8 and up[t >= 31].min() == 2000
    # while 10% of the fleet goes down, tasks keep arriving and completing every second
    arrivals = tl["arrivals"][20:31]
    throughput = tl["throughput"][20:31]
    assert (arrivals > 0).all() and (throughput > 0.5 * arrivals).all(), (arrivals, throughput)
    assert summ["retries"] > 0 and summ["completed"] > 0.99 * summ["tasks"]


def test_crashes_spread_over_over_s() -> None:
    s = load("crash_storm", **{"workload.0.arrival.rate_per_s": 50.0, "faults.0.at_s": 5.5, "faults.0.over_s": 10.0})
    r = run(s)
    t, up = r.timelines["sample_t_s"], r.timelines["agents_up"]
    # one crash every second from 5.5 s: 50 agents, 1 down at 6 s, 5 at 10 s, all 10 from 15 s
    assert [int(up[np.flatnonzero(t == k)[0]]) for k in (5, 6, 10, 15, 30)] == [50, 49, 45, 40, 40]
    assert up[t >= 41].min() == 50
