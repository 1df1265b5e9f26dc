"""Same cluster core, two drivers: the SimPy cluster simulator and three in-process hubs with ClusterNodes (live frames).

Both are fed one script (agents spread over three routers, task arrivals spread over the
routers in turn, each task's service time, some longer than the attempt timeout) and
must make the same routing decisions: which task ran on which agent, in order, and when.
"""

from __future__ import annotations

import heapq
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from aicp.cluster import ClusterConfig
from aicp.inprocess import Endpoint
from aicp.messages import Task
from aicp.sim import scenario as scenario_mod
from aicp.sim.cluster import ClusterSimulation
from aicp.sim.engine import router_config, router_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from cluster_harness import ClusterHarness

ROUTERS = 3
AGENTS = 6  # two per router
START = 0.2  # after the first summaries have gone round


def script(tmp_path: Path) -> scenario_mod.Scenario:
    rng = random.Random(7)
    t = START
    lines = ["t_s,method,service_ms"]
    for _ in range(300):
        t += rng.expovariate(60.0)
        service = 300.0 if rng.random() < 0.05 else rng.uniform(5.0, 150.0)  # 5% outlast the 200 ms attempt timeout
        lines.append(f"{t:.6f},w,{service:.3f}")
    (tmp_path / "trace.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "parity.toml").write_text(
        f"""
name = "cluster-parity"
seed = 3
duration_s = 15.0
sign_cost_us = 0.0
verify_cost_us = 0.0
[[agents]]
count = {AGENTS}
capabilities = ["w"]
concurrency = 1000  # no queue at the agent: service times are the script's
service_time = {{ dist = "constant", mean_ms = 1.0 }}
[[workload]]
method = "w"
arrival = {{ process = "trace", file = "trace.csv" }}
[router]
timeout_ms = 200.0
max_attempts = 3
retry_budget_ratio = 1.0
[[routers]]
count = {ROUTERS}
latency_ms = 0.0
"""
    )
    return scenario_mod.load(tmp_path / "parity.toml")


def seeds(s: scenario_mod.Scenario) -> dict[str, int]:
    base = router_seed(np.random.SeedSequence(s.seed, spawn_key=(0,)))
    return {f"r{i}": base + i for i in range(ROUTERS)}


def simpy_trace(s: scenario_mod.Scenario, strategy: str) -> list[tuple[int, str]]:
    result = ClusterSimulation(s, strategy, np.random.SeedSequence(s.seed, spawn_key=(0,)), trace=True).run()
    assert result.trace is not None and result.summary["lost_total"] == 0 and result.summary["duplicate_outcomes"] == 0
    assert result.summary["forwards"] > 0
    ids = s.agent_ids()
    return [(int(task), ids[agent]) for task, agent, _ in result.trace]


def hub_trace(s: scenario_mod.Scenario, strategy: str) -> list[tuple[int, str]]:
    names = [f"r{i}" for i in range(ROUTERS)]
    spec = s.routers[0]
    c = ClusterHarness(names, strategy, now=0.0, router_config=router_config(s), seeds=seeds(s),
                       cluster_config=ClusterConfig(publish_interval_s=spec.publish_interval_ms / 1000.0, peer_timeout_s=spec.peer_timeout_ms / 1000.0))
    agents: list[Endpoint] = [c.agent(names[i * ROUTERS // AGENTS], agent_id, ["w"], auto=False, concurrency=1000) for i, agent_id in enumerate(s.agent_ids())]
    ctls = [c.controller(name, f"ctl-{name}") for name in names]
    rows = [line.split(",") for line in (Path(s.base_dir) / "trace.csv").read_text().splitlines()[1:]]
    service = {str(i): float(ms) / 1000.0 for i, (_, _, ms) in enumerate(rows)}
    events: list[tuple[float, int, str, object]] = [(float(t), i, "submit", i) for i, (t, _, _) in enumerate(rows)]
    heapq.heapify(events)
    seq = len(events)
    trace: list[tuple[int, str]] = []
    def collect() -> None:
        nonlocal seq
        for ep in agents:
            while ep.held:
                received = ep.held.popleft()
                assert isinstance(received.body, Task)
                trace.append((int(received.body.id), ep.session.peer_id))
                seq += 1
                heapq.heappush(events, (c.now + service[received.body.id], seq, "answer", (ep, received)))

    while events:
        when, _, kind, item = heapq.heappop(events)
        while True:  # the routers' deadlines before this event, one instant at a time, so the trace stays in time order
            due = [d for node in c.nodes.values() if (d := node.next_deadline()) is not None and d <= when]
            if not due:
                break
            c.advance(min(due) - c.now)
            collect()
        c.advance(when - c.now)
        if kind == "submit":
            assert isinstance(item, int)
            ctls[item % ROUTERS].submit("w", {}, task_id=str(item))
        else:
            ep, received = item  # type: ignore[misc]
            ep.answer(received, ok=True, obj=None)
        c.pump()
        collect()
    c.advance(5.0)
    assert sum(len(ctl.outcomes) for ctl in ctls) == len(rows)
    assert all(n == 1 for ctl in ctls for n in ctl.outcome_count.values())
    return trace


@pytest.mark.parametrize("strategy", ["round_robin", "random", "least_loaded", "power_of_two", "trust_weighted", "latency_ewma"])
def test_cluster_simulator_and_inprocess_cluster_route_identically(tmp_path: Path, strategy: str) -> None:
    s = script(tmp_path)
    sim = simpy_trace(s, strategy)
    hub = hub_trace(s, strategy)
    assert len(sim) == len(hub) > 300  # timeouts caused re-dispatches
    assert sim == hub
