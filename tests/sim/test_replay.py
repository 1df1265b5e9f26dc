"""A recorded trace becomes a scenario: the exact arrivals, the agents joining and leaving when they did,
and their signed service times."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sim_helpers import run

from aicp import trace
from aicp.sim.replay import scenario_from_trace
from aicp.sim.scenario import ScenarioError

T0 = 1_700_000_000.0


def recorded(n_tasks: int = 40) -> bytes:
    ev: list[trace.TraceEvent] = [
        trace.Header(t=T0, v=1, router="router", strategy="round_robin", config={"attempt_timeout_s": 2.0, "lease_s": 9.0, "heartbeat_s": 3.0}),
        trace.AgentUp(t=T0, agent="fast", capabilities=["m"], concurrency=2),
        trace.AgentUp(t=T0 + 0.5, agent="slow/1", capabilities=["m"], concurrency=1),
    ]
    for i in range(n_tasks):
        t = T0 + 0.1 + i * 0.05
        task = f"ctl/t{i}"
        agent = "fast" if i % 2 else "slow/1"
        ev += [trace.Arrive(t=t, task=task, method="m", bytes=10, timeout_ms=4000.0 if i < 30 else None),
               trace.Dispatch(t=t, task=task, agent=agent, attempt=1),
               trace.Reply(t=t + 0.01, task=task, agent=agent, ok=True, service_ms=2.0 if agent == "fast" else 20.0),
               trace.End(t=t + 0.01, task=task, outcome="completed", attempts=1, agent=agent)]
    ev += [trace.AgentDown(t=T0 + 1.0, agent="slow/1", reason="disconnected"), trace.AgentUp(t=T0 + 1.5, agent="slow/1", capabilities=["m"], concurrency=1)]
    ev.sort(key=lambda e: e.t)
    return b"".join(trace.encode(e) for e in ev)


def test_the_scenario_holds_the_recorded_arrivals_agents_and_absences(tmp_path: Path) -> None:
    s = scenario_from_trace(recorded(), tmp_path, name="rec", service="task", strategies=["least_loaded"], replications=2, seed=3)
    assert [g.name for g in s.agents] == ["fast", "slow_1"] and [g.concurrency for g in s.agents] == [2, 1]
    assert sorted((w.method, w.timeout_ms or 0.0) for w in s.workload) == [("m", 0.0), ("m", 4000.0)]
    rows = [r for w in s.workload for r in csv.DictReader(s.resolve(w.arrival.file).open())]  # type: ignore[union-attr]
    assert len(rows) == 40 and sorted(float(r["t_s"]) for r in rows)[0] == 0.0  # time 0 is the first arrival
    assert {float(r["service_ms"]) for r in rows} == {2.0, 20.0}
    crashes = sorted((f.at_s, f.until_s, tuple(f.agents)) for f in s.faults)  # type: ignore[attr-defined,arg-type]
    assert crashes == [(0.0, pytest.approx(0.4), ("slow_1-0000",)), (pytest.approx(0.9), pytest.approx(1.4), ("slow_1-0000",))]
    assert s.router.timeout_ms == 2000.0 and s.router.lease_s == 9.0 and s.strategies == ["least_loaded"] and s.seed == 3


def test_replaying_runs_every_recorded_task_once(tmp_path: Path) -> None:
    s = scenario_from_trace(recorded(), tmp_path, service="agent")
    result = run(s, "least_loaded")
    assert result.summary["tasks"] == 40 and result.summary["lost"] == 0
    assert not any(r.get("service_ms") for w in s.workload for r in csv.DictReader(s.resolve(w.arrival.file).open()))  # type: ignore[union-attr]
    samples = np.loadtxt(s.resolve(s.agents[1].service_time.file), skiprows=1)  # type: ignore[union-attr]
    assert set(samples.tolist()) == {20.0}  # the slow agent keeps its own distribution


def test_a_trace_without_agents_or_tasks_is_refused(tmp_path: Path) -> None:
    header = trace.encode(trace.Header(t=T0, v=1, router="r", strategy="s"))
    with pytest.raises(ScenarioError, match="no agent"):
        scenario_from_trace(header, tmp_path)
    with pytest.raises(ScenarioError, match="no task"):
        scenario_from_trace(header + trace.encode(trace.AgentUp(t=T0, agent="a", capabilities=["m"], concurrency=1)), tmp_path)
    with pytest.raises(ScenarioError, match="replay:1"):
        scenario_from_trace(b"{}\n", tmp_path)


def test_a_replay_with_stack_costs_charges_the_recorded_round_trips(tmp_path: Path) -> None:
    # every recorded task: 10 ms from dispatch to result; the fast agent signed 2 ms of it (an 8 ms round trip),
    # the slow one 20 ms (made up by hand: a round trip below zero, which the simulator clips to none)
    plain = run(scenario_from_trace(recorded(), tmp_path / "plain"), "round_robin")
    s = scenario_from_trace(recorded(), tmp_path / "costs", stack_costs=True)
    assert s.calibration is not None and (tmp_path / "costs" / "stack.json").is_file()
    costed = run(s, "round_robin")
    assert costed.summary["tasks"] == 40 and costed.summary["lost"] == 0
    # half the hops drawn carry 4 ms each way, half none: some 4 ms more per task
    assert costed.summary["latency_ms"]["p50"] > plain.summary["latency_ms"]["p50"] + 3.0
