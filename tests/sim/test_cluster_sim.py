"""The cluster in the simulator (aicp.sim.cluster): the same Router and ClusterView per router over simulated links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aicp.sim import scenario as scenario_mod
from aicp.sim.cluster import ClusterSimulation, placement
from aicp.sim.metrics import COMPLETED

BASE = """
name = "cluster"
seed = 1
duration_s = {duration}
warmup_s = 1.0
replications = 1
strategies = ["least_loaded"]
[network]
latency = {{ dist = "constant", mean_ms = 0.2 }}
reconnect_s = 0.5
[[agents]]
count = 30
capabilities = ["w"]
service_time = {{ dist = "exponential", mean_ms = 50.0 }}
[[workload]]
method = "w"
arrival = {{ process = "poisson", rate_per_s = {rate} }}
timeout_ms = 10000.0
[router]
timeout_ms = 2000.0
[[routers]]
count = {routers}
latency_ms = 0.5
{extra}
"""


def load(tmp_path: Path, duration: float = 12.0, rate: float = 420.0, routers: int = 3, extra: str = "") -> scenario_mod.Scenario:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(duration=duration, rate=rate, routers=routers, extra=extra))
    return scenario_mod.load(path)


def run(s: scenario_mod.Scenario, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:  # type: ignore[type-arg]
    result = ClusterSimulation(s, "least_loaded", np.random.SeedSequence(seed)).run()
    return result.summary, result.records


def test_placement_follows_the_weights() -> None:
    assert placement(30, [3, 2, 1]) == [15, 10, 5]
    assert placement(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(placement(7, [0.2, 0.5])) == 7


def test_uneven_agents_every_task_ends_once_and_some_cross_routers(tmp_path: Path) -> None:
    summary, rec = run(load(tmp_path, extra="placement = [3, 2, 1]"))
    assert summary["submitted"] == summary["ended"] and summary["lost_total"] == 0 and summary["duplicate_outcomes"] == 0
    assert (rec["outcome"] == COMPLETED).all()
    # tasks arrive evenly at the three routers but half the agents are at r0: r1 and r2 must forward
    assert 0.1 < summary["cross_router_share"] < 0.9
    assert summary["per_router"]["r0"]["completed"] > summary["per_router"]["r2"]["completed"]


def test_router_crash_and_partition_end_every_task_exactly_once(tmp_path: Path) -> None:
    faults = 'faults = [{ at_s = 4.0, action = "crash", router = 1, until_s = 7.0 }, { at_s = 8.0, action = "partition", router = 2, until_s = 9.5 }]'
    summary, rec = run(load(tmp_path, extra="placement = [3, 2, 1]\n" + faults))
    assert summary["submitted"] == summary["ended"] and summary["duplicate_outcomes"] == 0
    assert summary["resubmitted"] > 0  # controllers of the crashed router moved and re-sent
    assert summary["per_router"]["r0"]["routers_lost"] >= 2  # r0 lost r1 (crash) and r2 (partition)
    assert (rec["outcome"] == COMPLETED).mean() > 0.99


def test_a_partitioned_router_without_agents_fails_its_tasks_with_no_agent(tmp_path: Path) -> None:
    extra = 'placement = [1, 1, 0]\nfaults = [{ at_s = 3.0, action = "partition", router = 2, until_s = 6.0 }]'
    summary, rec = run(load(tmp_path, duration=8.0, extra=extra))
    assert summary["submitted"] == summary["ended"]
    assert summary["failed_by_code"].get("no-agent", 0) > 0  # r2 routes locally and has no agent
    ends = rec["end"][rec["outcome"] == 4]
    assert ends.min() >= 3.0 and ends.max() <= 6.1


def test_more_routers_with_router_cpu_carry_more_load(tmp_path: Path) -> None:
    """With router CPU modelled, one router saturates; three share the load (the plan past one machine)."""
    cpu = "task_cpu_us = 4000.0\nhop_cpu_us = 500.0"
    one, _ = run(load(tmp_path, duration=6.0, rate=420.0, routers=1, extra=cpu))
    three, _ = run(load(tmp_path, duration=6.0, rate=420.0, routers=3, extra=cpu))
    assert one["throughput_per_s"] < 300.0 < three["throughput_per_s"]


def test_bad_router_sections_are_refused(tmp_path: Path) -> None:
    with pytest.raises(scenario_mod.ScenarioError, match="placement"):
        load(tmp_path, extra="placement = [1, 2]")
    with pytest.raises(scenario_mod.ScenarioError, match="router"):
        load(tmp_path, extra='faults = [{ at_s = 1.0, action = "crash", router = 5 }]')


def test_agent_faults_in_a_cluster_end_every_task_exactly_once(tmp_path: Path) -> None:
    """Agent faults with several routers: crashed agents' tasks fail over, partitioned ones are dropped by
    their lease and come back when healed, a misbehaving one's results are refused."""
    faults = """
[[faults]]
action = "crash"
at_s = 3.0
agents = 6
until_s = 6.0
[[faults]]
action = "partition"
at_s = 4.0
agents = 4
until_s = 8.0
[[faults]]
action = "misbehave"
at_s = 2.0
agents = ["g0-0000", "g0-0029"]
until_s = 5.0
"""
    sim = ClusterSimulation(load(tmp_path, duration=10.0, extra="placement = [3, 2, 1]\n" + faults), "least_loaded", np.random.SeedSequence(0))
    result = sim.run()
    summary, rec = result.summary, result.records
    assert all(a.up and a.connected for a in sim.agents)  # recovered and healed agents registered again
    assert not sim.link.partitioned and sim.link.dropped > 0
    assert summary["submitted"] == summary["ended"] and summary["lost_total"] == 0 and summary["duplicate_outcomes"] == 0
    assert summary["bad_signatures"] > 0
    assert (rec["outcome"] == COMPLETED).mean() > 0.98  # failed attempts are retried on other agents
    assert (rec["attempts"] > 1).sum() > 0
    # the same scenario without the faults: every task completes at the first attempt
    clean, rec0 = run(load(tmp_path, duration=10.0, extra="placement = [3, 2, 1]"))
    assert clean["bad_signatures"] == 0 and (rec0["attempts"] == 1).all()
