"""The scheduler-trace reader of ``aicp.lab.bench.sched_trace``: waits for a CPU, and behind whom, from a tracefs text."""

from __future__ import annotations

import pytest

from aicp.lab.bench import sched_trace


def sw(t: float, cpu: int, prev: int, state: str, nxt: int) -> str:
    return (f"          python-{prev}     [{cpu:03d}] d..2. {t:.6f}: sched_switch: prev_comm=python prev_pid={prev} prev_prio=120 "
            f"prev_state={state} ==> next_comm=python next_pid={nxt} next_prio=120")


def wake(t: float, by: int, pid: int, new: bool = False) -> str:
    kind = "sched_wakeup_new" if new else "sched_wakeup"
    return f"          python-{by}     [000] d..2. {t:.6f}: {kind}: comm=python pid={pid} prio=120 target_cpu=001"


# bench 50 spawned the router 100, an agent 200 and a load generator 300; 900 is someone else's job; 101 a thread of the router.
TRACE = [
    "# tracer: nop",
    wake(9.0, 50, 100, new=True),
    sw(9.0, 1, 0, "R", 100),         # new processes and threads run at once here (a wait of 0)...
    wake(9.1, 100, 101, new=True),
    sw(9.1, 1, 100, "S", 101),
    sw(9.2, 1, 101, "S", 0),         # ...and sleep
    sw(10.000, 0, 0, "R", 900),      # cpu0: idle -> another job
    sw(10.000, 1, 0, "R", 200),      # cpu1: idle -> agent
    wake(10.001, 200, 100),          # the router is woken...
    sw(10.004, 0, 900, "R", 100),    # ...and runs 3 ms later: behind the other job on cpu0 and the agent on cpu1
    sw(10.005, 1, 200, "R", 300),    # the agent is preempted by the load generator (still runnable)
    sw(10.006, 0, 100, "S", 200),    # the router sleeps; the agent runs again after 1 ms behind the router and the load generator
    sw(10.007, 1, 300, "S", 0),
    sw(10.008, 0, 200, "S", 101),    # the router's thread was never woken here: no wait
]
PIDS = {"bench": [50], "router": [100], "agents": [200], "loadgen": [300]}


def test_each_wait_and_what_ran_on_every_cpu_meanwhile() -> None:
    events = list(sched_trace.parse(TRACE))
    assert len(events) == 13 and events[0] == sched_trace.Wakeup(9.0, 100, 50, True)
    roles = sched_trace.roles_of(events, PIDS)
    assert roles[100] == "router" and roles[101] == "router"  # spawned by the bench, yet the router's; its thread too
    got = sched_trace.attribute(events, roles)
    assert got["router"].waits == pytest.approx([0.0, 0.0, 0.003])
    assert dict(got["router"].behind) == pytest.approx({"other": 0.003, "agents": 0.003})
    assert got["agents"].waits == pytest.approx([0.001])
    assert dict(got["agents"].behind) == pytest.approx({"loadgen": 0.001, "router": 0.001})
    assert "loadgen" not in got  # woken onto an idle CPU at once
    lines = sched_trace.report(got, 1.0)
    assert any(line.split()[0] == "router" and "other 50%, agents 50%" in line for line in lines[1:])


def test_the_window_is_the_load_generators_time_and_clips_the_waits() -> None:
    events = list(sched_trace.parse(TRACE))
    roles = sched_trace.roles_of(events, PIDS)
    window = sched_trace.window_of(events, roles)
    assert window == pytest.approx((10.005, 10.007))
    got = sched_trace.attribute(events, roles, window)
    assert "router" not in got or not got["router"].waits  # its wait began before the window
    assert got["agents"].waits == pytest.approx([0.001])
