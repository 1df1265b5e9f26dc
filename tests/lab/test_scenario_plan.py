"""``aicp bench --scenario``: what a scenario file becomes (processes, flags, schedule, fault steps), and what it refuses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aicp.cli import serve
from aicp.lab.bench.scenario_plan import Unsupported, build_plan
from aicp.lab.bench.schedule import Schedule, body_of_size, from_trace
from aicp.sim import scenario as scenario_mod

ROOT = Path(__file__).resolve().parents[2]


def two_groups(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "seed": 3,
        "duration_s": 10.0,
        "warmup_s": 1.0,
        "strategies": ["least_loaded", "round_robin"],
        "network": {"latency": {"dist": "lognormal", "mean_ms": 2.0, "sigma": 0.8}},
        "agents": [
            {"name": "fast", "count": 3, "capabilities": ["a", "b"], "concurrency": 2, "service_time": {"dist": "lognormal", "mean_ms": 4.0, "sigma": 1.3}},
            {"count": 2, "capabilities": ["a"], "speed": 0.5, "fail_prob": 0.1, "service_time": {"dist": "exponential", "mean_ms": 5.0}},
        ],
        "workload": [
            {"method": "a", "arrival": {"process": "poisson", "rate_per_s": 100.0}, "timeout_ms": 2500.0},
            {"method": "b", "arrival": {"process": "constant", "rate_per_s": 10.0}},
        ],
        "router": {"timeout_ms": 700.0, "deadline_ms": 9000.0, "heartbeat_s": 2.0, "lease_s": 6.0, "max_attempts": 4},
        "faults": [{"action": "crash", "at_s": 3.0, "until_s": 5.0, "agents": ["fast-0001"]}],
    }
    data.update(extra)
    return data


def plan_of(data: dict[str, Any], **kw: Any) -> Any:
    return build_plan(scenario_mod.from_data(data, "test.toml"), "test.toml", **kw)


def test_every_group_agent_and_parameter_reaches_an_agent_process() -> None:
    plan = plan_of(two_groups())
    agents = {a.id: a for p in plan.procs for a in p.agents}
    assert sorted(agents) == ["fast-0000", "fast-0001", "fast-0002", "g1-0000", "g1-0001"]
    fast, slow = agents["fast-0000"], agents["g1-0001"]
    assert fast.service_time == {"dist": "lognormal", "mean_ms": 4.0, "sigma": 1.3}  # sigma kept
    assert (fast.capabilities, fast.concurrency, fast.speed, fast.fail_prob) == (["a", "b"], 2, 1.0, 0.0)
    assert slow.service_time == {"dist": "exponential", "mean_ms": 5.0}
    assert (slow.capabilities, slow.concurrency, slow.speed, slow.fail_prob) == (["a"], 1, 0.5, 0.1)
    assert len({a.seed for a in agents.values()}) == 5
    # the faulted agent runs alone, so SIGKILL takes down exactly that agent
    assert [p.agents[0].id for p in plan.procs if p.name == "fast-0001"] == ["fast-0001"]
    assert all(len(p.agents) >= 1 and "fast-0001" not in [a.id for a in p.agents] for p in plan.procs if p.name != "fast-0001")
    assert plan.latency == {"dist": "lognormal", "mean_ms": 2.0, "sigma": 0.8}
    spec = next(p for p in plan.procs if p.name == "fast-0001").spec("ws://x", plan.latency)
    assert spec["latency"] == plan.latency and spec["agents"][0]["id"] == "fast-0001"


def test_router_section_becomes_serve_flags_and_strategies_come_from_the_file_or_the_flag() -> None:
    plan = plan_of(two_groups())
    flags = dict(zip(plan.router_flags[::2], plan.router_flags[1::2]))
    assert flags["--attempt-timeout"] == "0.7" and flags["--default-deadline"] == "9.0" and flags["--max-attempts"] == "4"
    assert flags["--heartbeat"] == "2.0" and flags["--lease"] == "6.0" and flags["--trust-prior"] == "0.5"
    assert plan.strategies == ["least_loaded", "round_robin"]
    assert plan_of(two_groups(), strategy="random").strategies == ["random"]
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    cfg = serve.build_server(parser.parse_args(["--port", "0", *plan.router_flags])).router.config  # every flag exists and reaches the core
    assert (cfg.attempt_timeout_s, cfg.default_deadline_s, cfg.max_attempts, cfg.heartbeat_s, cfg.lease_s) == (0.7, 9.0, 4, 2.0, 6.0)
    assert (cfg.backoff_base_s, cfg.backoff_cap_s, cfg.retry_budget_ratio, cfg.trust_prior) == (0.005, 1.0, 0.2, 0.5)


def test_every_workload_is_in_the_schedule_with_its_deadline() -> None:
    plan = plan_of(two_groups())
    s = plan.schedule
    assert s.methods == ["a", "b"]
    a, b = s.method_index == 0, s.method_index == 1
    assert 800 < a.sum() < 1200 and b.sum() == 100  # Poisson 100/s and constant 10/s over 10 s
    assert np.all(np.diff(s.t_s) >= 0) and s.t_s[-1] < 10.0
    assert set(s.deadline_ms[a].tolist()) == {2500.0} and set(s.deadline_ms[b].tolist()) == {9000.0}
    assert plan_of(two_groups(max_tasks=50)).schedule.t_s.size == 50
    again = plan_of(two_groups()).schedule
    assert np.array_equal(again.t_s, s.t_s)  # the scenario's seed fixes the schedule


def test_fault_steps_kill_and_restart_at_the_files_times() -> None:
    plan = plan_of(two_groups(faults=[
        {"action": "crash", "at_s": 3.0, "until_s": 5.0, "agents": ["fast-0001"]},
        {"action": "crash", "at_s": 4.0, "agents": 1},
        {"action": "recover", "at_s": 6.0, "agents": 1},
        {"action": "flap", "at_s": 7.0, "period_s": 1.0, "until_s": 8.0, "agents": ["g1-0000"]},
    ]))
    steps = [(s.t_s, s.action, s.proc) for s in plan.steps]
    assert steps[0] == (3.0, "kill", "fast-0001")
    n_up_picked = [p for t, a, p in steps if t == 4.0 and a == "kill"]
    assert len(n_up_picked) == 1 and n_up_picked[0] != "fast-0001"
    assert (5.0, "start", "fast-0001") in steps
    assert (6.0, "start", n_up_picked[0]) in steps  # recover restarts the oldest still down
    assert [(t, a) for t, a, p in steps if p == "g1-0000" and t >= 7.0] == [(7.0, "kill"), (7.5, "start")]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"network": {"loss": 0.01}}, "network.loss = 0.01"),
        ({"network": {"reconnect_s": 3.0}}, "network.reconnect_s = 3.0"),
        ({"faults": [{"action": "slow", "at_s": 1.0, "factor": 3.0}]}, "faults[0].action = 'slow'"),
        ({"faults": [{"action": "partition", "at_s": 1.0}]}, "faults[0].action = 'partition'"),
        ({"faults": [{"action": "heartbeat_loss", "at_s": 1.0}]}, "faults[0].action = 'heartbeat_loss'"),
        ({"faults": [{"action": "misbehave", "at_s": 1.0}]}, "faults[0].action = 'misbehave'"),
    ],
)
def test_what_live_cannot_run_is_refused_naming_field_and_value(change: dict[str, Any], named: str) -> None:
    with pytest.raises(Unsupported, match=named.replace("[", r"\[").replace("]", r"\]")):
        plan_of(two_groups(**change))


def test_groups_with_different_trust_are_refused_and_one_shared_trust_becomes_the_prior() -> None:
    data = two_groups()
    data["agents"][0]["trust"] = 0.9
    with pytest.raises(Unsupported, match=r"agents\[0\]\.trust = 0\.9"):
        plan_of(data)
    data["agents"][1]["trust"] = 0.9
    flags = plan_of(data).router_flags
    assert flags[flags.index("--trust-prior") + 1] == "0.9"


def test_a_trace_workload_with_per_task_service_times_is_refused(tmp_path: Path) -> None:
    (tmp_path / "arr.csv").write_text("t_s,method,service_ms\n0.1,a,3.0\n0.2,a,\n")
    data = two_groups(base_dir=str(tmp_path), workload=[{"method": "a", "arrival": {"process": "trace", "file": "arr.csv"}}])
    with pytest.raises(Unsupported, match=r"workload\[0\]\.arrival\.file = 'arr\.csv'"):
        plan_of(data)
    (tmp_path / "arr.csv").write_text("t_s,method\n0.1,a\n0.25,b\n")
    s = plan_of(data).schedule
    assert s.t_s.tolist() == [0.1, 0.25] and [s.methods[i] for i in s.method_index] == ["a", "b"]


def test_the_shipped_live_scenarios_all_build() -> None:
    for name in ("live_small", "live_two_groups", "mm1", "mmc"):
        plan = build_plan(scenario_mod.load(ROOT / "scenarios" / f"{name}.toml"), name)
        assert plan.agents >= 1 and len(plan.schedule) > 0


def test_schedules_round_trip_split_and_come_from_a_trace(tmp_path: Path) -> None:
    s = Schedule.build([(0.2, "b", None, 30), (0.1, "a", 500.0, 100), (0.3, "a", None, 5)])
    assert s.t_s.tolist() == [0.1, 0.2, 0.3]
    path = tmp_path / "s.npz"
    s.save(path)
    back = Schedule.load(path)
    tasks = list(back.tasks())
    assert [(t, m, d) for t, m, _, d in tasks] == [(0.1, "a", 500.0), (0.2, "b", None), (0.3, "a", None)]
    assert [len(bytes(body)) for _, _, body, _ in tasks] == [100, 30, 11]  # payload sizes as recorded (11: the smallest)
    assert len(body_of_size(64)) == 64
    assert [len(p) for p in s.split(2)] == [2, 1]
    assert back.max_deadline_s(30.0) == 30.0 and Schedule.build([(0, "a", 500.0, 5)]).max_deadline_s(30.0) == 0.5
    from aicp import trace

    lines = [trace.Header(t=100.0, v=1, router="r", strategy="round_robin"),
             trace.Arrive(t=101.0, task="c/1", method="a", bytes=40, timeout_ms=800.0),
             trace.Arrive(t=101.5, task="c/2", method="b", bytes=20)]
    sched, header = from_trace(b"".join(trace.encode(e) for e in lines))
    assert header.strategy == "round_robin"
    assert sched.t_s.tolist() == [0.0, 0.5] and sched.size.tolist() == [40, 20] and sched.deadline_ms[0] == 800.0
