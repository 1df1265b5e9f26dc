"""The calibrated stack model (aicp/sim/stack.py): what it charges, where, and that it stays off without a calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_helpers import run

from aicp import trace
from aicp.sim import scenario as scenario_mod
from aicp.sim import stack


def _write(path: Path, levels: list[dict[str, Any]] | None = None, **fields: Any) -> Path:
    """A calibration file; ``fields`` go to its one level unless they are ``v``, ``timer_ms`` or ``slot_ms``."""
    top = {k: fields.pop(k) for k in ("v", "timer_ms", "slot_ms", "lead_ms") if k in fields}
    level = {"rate_per_s": 100.0, "wake_ms": [0.5], "agent_overhead_ms": [1.0], "client_ms": [2.0], **fields}
    cal = {"v": 1, "timer_ms": 0.0, "slot_ms": 0.0, **top, "levels": levels if levels is not None else [level]}
    path.write_text(json.dumps(cal))
    return path


def _scenario(
    tmp_path: Path, service: dict[str, Any], calibration: str | None, rate: float = 10.0, agents: int = 1
) -> scenario_mod.Scenario:
    data: dict[str, Any] = {
        "name": "stack",
        "seed": 3,
        "duration_s": 20.0,
        "warmup_s": 1.0,
        "replications": 1,
        "strategies": ["least_loaded"],
        "sign_cost_us": 0.0,
        "verify_cost_us": 0.0,
        "agents": [{"count": agents, "capabilities": ["m"], "concurrency": 1, "service_time": service}],
        "workload": [{"method": "m", "arrival": {"process": "constant", "rate_per_s": rate}}],
        "base_dir": str(tmp_path),
    }
    if calibration is not None:
        data["calibration"] = {"file": calibration}
    return scenario_mod.from_data(data)


def _latencies_ms(result: Any) -> np.ndarray:
    rec = result.records
    done = rec["outcome"] == 1
    return (rec["end"][done] - rec["arrival"][done]) * 1000.0


def test_an_idle_agent_task_costs_client_plus_round_trip_plus_service_plus_wake(tmp_path: Path) -> None:
    _write(tmp_path / "cal.json")
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "cal.json"), "least_loaded"))
    assert lat.size > 150
    np.testing.assert_allclose(lat, 2.0 + 1.0 + 3.0 + 0.5, atol=1e-9)


def test_without_a_calibration_the_latency_is_the_service_alone(tmp_path: Path) -> None:
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, None), "least_loaded"))
    np.testing.assert_allclose(lat, 3.0, atol=1e-9)


def test_the_agent_sleeps_whole_timer_ticks(tmp_path: Path) -> None:
    _write(tmp_path / "cal.json", timer_ms=1.0, wake_ms=[0.0], agent_overhead_ms=[0.0], client_ms=[0.0])
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.4}, "cal.json"), "least_loaded"))
    np.testing.assert_allclose(lat, 3.0, atol=1e-9)


def test_the_agent_sleeps_its_draw_less_the_calibration_s_lead_in_whole_ticks(tmp_path: Path) -> None:
    # 3.7 ms less a 0.3 ms lead asks for 3.4 ms: 3 ticks; an older file (no lead_ms: agents that slept the whole draw) 4
    _write(tmp_path / "lead.json", v=2, timer_ms=1.0, lead_ms=0.3, wake_ms=[0.25], agent_overhead_ms=[0.0], client_ms=[0.0])
    _write(tmp_path / "old.json", v=2, timer_ms=1.0, wake_ms=[0.25], agent_overhead_ms=[0.0], client_ms=[0.0])
    for name, want in (("lead.json", 3.25), ("old.json", 4.25)):
        lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.7}, name), "least_loaded"))
        np.testing.assert_allclose(lat, want, atol=1e-9)
    _write(tmp_path / "short.json", v=2, timer_ms=1.0, lead_ms=0.3, wake_ms=[0.0], agent_overhead_ms=[0.0], client_ms=[0.0])
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 0.2}, "short.json"), "least_loaded"))
    np.testing.assert_allclose(lat, 0.0, atol=1e-9)  # a draw under the lead asks for no sleep: never a negative one


def test_the_model_rounds_what_the_live_synthetic_handler_asks_its_timer_for() -> None:
    # the live handler asks asyncio.sleep for handlers.timer_sleep_s(draw); uvloop's call_later waits round(delay * 1000)
    # whole ms (0: the next loop turn). The model must round the same request: this fails if either side changes alone
    from aicp.live.handlers import SLEEP_LEAD_MS, timer_sleep_s

    assert SLEEP_LEAD_MS > 0.0
    draws_ms = [0.0, 0.1, 0.29, 0.31, 0.7, 0.9, 1.2, 1.4, 2.5, 2.7, 2.9, 7.04, *np.random.default_rng(1).exponential(2.5, 2000)]
    for d in draws_ms:
        live_ms = round(timer_sleep_s(d / 1000.0) * 1000.0)
        assert stack.timer_sleep(d, SLEEP_LEAD_MS, 1.0) == pytest.approx(live_ms, abs=1e-9), d
        assert stack.timer_sleep(d, SLEEP_LEAD_MS, 0.0) == pytest.approx(timer_sleep_s(d / 1000.0) * 1000.0, abs=1e-9)
    assert stack.timer_sleep(2.7, 0.0, 1.0) == 3.0 and stack.timer_sleep(2.7, SLEEP_LEAD_MS, 1.0) == 2.0


def test_the_slot_part_holds_the_agent_and_the_rest_is_split_over_the_hops(tmp_path: Path) -> None:
    # slot 0.4 of a 1.0 ms round trip: the agent is busy 3 + 0.5 + 0.4 ms per task, the hops carry 0.3 ms each
    _write(tmp_path / "cal.json", slot_ms=0.4)
    result = run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "cal.json"), "least_loaded")
    np.testing.assert_allclose(_latencies_ms(result), 2.0 + 1.0 + 3.0 + 0.5, atol=1e-9)
    served = result.agents["served"][0]
    assert result.agents["busy_time_s"][0] == pytest.approx(served * 3.9e-3)


def test_calibrated_costs_raise_queueing_at_high_utilisation(tmp_path: Path) -> None:
    # 1 ms more per task on a 4 ms service at 75% busy: the agent is 94% busy and waits grow far beyond 1 ms
    _write(tmp_path / "cal.json", wake_ms=[1.0], agent_overhead_ms=[0.0], client_ms=[0.0])
    service = {"dist": "exponential", "mean_ms": 4.0}
    plain = run(_scenario(tmp_path, service, None, rate=750.0, agents=4), "round_robin").summary["latency_ms"]["p50"]
    cal = run(_scenario(tmp_path, service, "cal.json", rate=750.0, agents=4), "round_robin").summary["latency_ms"]["p50"]
    assert cal > plain + 3.0


def test_a_bad_calibration_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(stack.CalibrationError, match="version 3"):
        stack.load(_write(tmp_path / "v3.json", v=3))
    with pytest.raises(stack.CalibrationError, match="client_ms at 100/s holds no samples"):
        stack.load(_write(tmp_path / "empty.json", client_ms=[]))
    with pytest.raises(scenario_mod.ScenarioError, match=r"calibration\.file"):
        _scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "missing.json")


def test_a_scenario_draws_from_the_levels_around_its_rate(tmp_path: Path) -> None:
    def level(rate: float, wake: float) -> dict[str, Any]:
        return {"rate_per_s": rate, "wake_ms": [wake], "agent_overhead_ms": [0.0], "client_ms": [0.0]}

    _write(tmp_path / "cal.json", levels=[level(400.0, 2.0), level(100.0, 1.0)])  # unsorted on purpose
    cal = stack.load(tmp_path / "cal.json")
    assert [lv.rate_per_s for lv in cal.levels] == [100.0, 400.0]
    for rate, low, high, weight in ((50.0, 100.0, 100.0, 0.0), (250.0, 100.0, 400.0, 0.5), (900.0, 400.0, 400.0, 0.0)):
        lo, hi, w = stack.bracket(cal.levels, rate)
        assert (lo.rate_per_s, hi.rate_per_s, w) == (low, high, weight)
    # 1 ms constant service at 250/s over 8 agents: half the tasks wake 1 ms late, half 2 ms
    lat = _latencies_ms(
        run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 1.0}, "cal.json", rate=250.0, agents=8), "least_loaded")
    )
    assert set(np.round(lat, 6)) == {2.0, 3.0}
    assert abs(np.mean(lat) - 2.5) < 0.05


# ----------------------------------------------------------------------------- costs read from a recorded run
T0 = 1_700_000_000.0


def _trace(concurrency: int, tasks: list[tuple[str, float, float, float, float]]) -> list[trace.TraceEvent]:
    """One agent; ``tasks``: (id, arrive, dispatch, result, signed service ms), times in s after T0."""
    ev: list[trace.TraceEvent] = [
        trace.Header(t=T0, v=1, router="r", strategy="least_loaded"),
        trace.AgentUp(t=T0, agent="a", capabilities=["m"], concurrency=concurrency),
    ]
    for task, t_a, t_d, t_r, svc in tasks:
        ev.append(trace.Arrive(t=T0 + t_a, task=task, method="m", bytes=1))
        ev.append(trace.Dispatch(t=T0 + t_d, task=task, agent="a", attempt=1))
        ev.append(trace.Reply(t=T0 + t_r, task=task, agent="a", ok=True, service_ms=svc))
        ev.append(trace.End(t=T0 + t_r, task=task, outcome="completed", attempts=1, agent="a"))
    ev.sort(key=lambda e: e.t)
    return ev


def test_run_costs_split_idle_dispatches_from_waits_for_a_slot() -> None:
    # 1 idle (round trip 6 - 4 = 2 ms); 2 waits for 1's slot (9.5 - 5.0 - 4.1 = 0.4 ms); 3 waits for 2's; 4 idle again
    tasks = [("1", 0.0, 0.0, 0.006, 4.0), ("2", 0.001, 0.001, 0.0145, 8.5), ("3", 0.002, 0.002, 0.0185, 3.5), ("4", 0.05, 0.05, 0.0531, 2.0)]
    costs = stack.costs_from_trace(_trace(1, tasks))
    np.testing.assert_allclose(costs.handler_ms, [4.0, 8.5, 3.5, 2.0])
    np.testing.assert_allclose(costs.idle_ms, [2.0, 1.1], atol=1e-3)
    np.testing.assert_allclose(costs.gap_ms, [0.0, 0.5], atol=1e-3)
    # with two slots, task 2 finds one free: a round trip, not a wait; 3 waits for the earliest outstanding (1),
    # but only 4 ms before 1's result, within the 90th percentile round trip (4.4 ms): it may still have been on its way
    two = stack.costs_from_trace(_trace(2, tasks))
    np.testing.assert_allclose(two.idle_ms, [2.0, 14.5 - 1.0 - 8.5, 1.1], atol=1e-3)
    assert two.gap_ms.size == 0
    slow = [*tasks[:2], ("3", 0.002, 0.002, 0.0185, 3.5)]
    slow[0] = ("1", 0.0, 0.0, 0.0101, 4.0)  # 1's result comes 8.1 ms after 3 was dispatched: 3 waited at the agent
    np.testing.assert_allclose(stack.costs_from_trace(_trace(2, slow)).gap_ms, [18.5 - 10.1 - 3.5], atol=1e-3)


def test_round_trips_weigh_each_second_by_its_dispatches() -> None:
    # second 0: one idle dispatch (1 ms) among ten; second 1: one idle (5 ms) alone. As they came: mean 3 ms;
    # weighed by dispatches: ten draws of 1 ms, one of 5 ms.
    tasks = [("q0", 0.0, 0.0, 0.003, 2.0)]
    tasks += [(f"b{i}", 0.001 * i, 0.001 * i, 0.5 + 0.01 * i, 2.0) for i in range(1, 10)]  # behind q0: waits
    tasks += [("s0", 1.5, 1.5, 1.507, 2.0)]
    costs = stack.costs_from_trace(_trace(1, tasks))
    np.testing.assert_allclose(sorted(costs.idle_ms), [1.0, 5.0], atol=1e-3)
    np.testing.assert_allclose(sorted(costs.overhead_ms), [1.0] * 10 + [5.0], atol=1e-3)


def test_run_costs_never_read_when_a_task_arrived_only_the_warm_up() -> None:
    # the same dispatches and results with arrivals moved earlier (longer waits at the router): the same costs
    tasks = [("1", 0.0, 0.0, 0.006, 4.0), ("2", 0.001, 0.001, 0.0145, 8.5), ("3", 0.04, 0.05, 0.0531, 2.0)]
    early = [(k, t_a - 0.03 if k != "1" else t_a, t_d, t_r, s) for k, t_a, t_d, t_r, s in tasks]
    a, b = stack.costs_from_trace(_trace(1, tasks)), stack.costs_from_trace(_trace(1, early))
    for name in ("handler_ms", "overhead_ms", "gap_ms"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    warm = stack.costs_from_trace(_trace(1, tasks), skip_s=0.01)  # tasks arriving in the first 10 ms are left out
    np.testing.assert_allclose(warm.handler_ms, [2.0])


def test_a_run_calibration_replaces_the_service_draw_with_the_handler_times(tmp_path: Path) -> None:
    tasks = [(str(i), 0.01 * i, 0.01 * i, 0.01 * i + 0.0035, 2.5) for i in range(30)]  # idle: round trip 1 ms, handler 2.5 ms
    cal = stack.from_run(stack.costs_from_trace(_trace(1, tasks)), client_ms=np.full(5, 0.25), fallback_slot_ms=0.125)
    assert cal.slot_ms == 0.125 and cal.timer_ms == 0.0 and cal.levels[0].wake_ms == []  # no waits: the fallback
    stack.write(cal, tmp_path / "run.json")
    # the scenario says 9 ms; the agents of the run took 2.5: the run's handler times win
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 9.0}, "run.json"), "least_loaded"))
    np.testing.assert_allclose(lat, 0.25 + 1.0 + 2.5, atol=1e-3)
    two = _scenario(tmp_path, {"dist": "constant", "mean_ms": 9.0}, "run.json")
    data = scenario_mod.to_data(two)
    data["agents"] = [data["agents"][0], {**data["agents"][0], "count": 1}]
    with pytest.raises(stack.CalibrationError, match="one agent group"):
        run(scenario_mod.from_data(data), "least_loaded")


def test_a_run_calibration_without_client_samples_takes_the_latency_at_the_router(tmp_path: Path) -> None:
    tasks = [(str(i), 0.01 * i, 0.01 * i, 0.01 * i + 0.004, 3.0) for i in range(30)]
    stack.write(stack.from_run(stack.costs_from_trace(_trace(1, tasks)), handler=False), tmp_path / "run.json")
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "run.json"), "least_loaded"))
    np.testing.assert_allclose(lat, 1.0 + 3.0, atol=1e-3)  # the scenario's service as it is, plus the round trip
    with pytest.raises(stack.CalibrationError, match="free slot"):
        stack.from_run(stack.costs_from_trace(_trace(1, [])))


def test_windowed_run_costs_follow_the_simulated_clock(tmp_path: Path) -> None:
    # second 0 of the run: round trips of 1 ms; second 1: 9 ms (a slow moment); handler 2 ms throughout
    tasks = [(f"a{i}", 0.1 * i, 0.1 * i, 0.1 * i + 0.003, 2.0) for i in range(10)]
    tasks += [(f"b{i}", 1.0 + 0.1 * i, 1.0 + 0.1 * i, 1.0 + 0.1 * i + 0.011, 2.0) for i in range(10)]
    costs = stack.costs_from_trace(_trace(1, tasks))
    assert len(costs.windows) == 2
    cal = stack.from_run(costs, windows=True)
    assert cal.levels[0].window_s == 1.0 and len(cal.levels[0].windows) == 2
    stack.write(cal, tmp_path / "run.json")
    assert stack.load(tmp_path / "run.json") == cal
    result = run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 7.0}, "run.json"), "least_loaded")
    rec = result.records
    done = rec["outcome"] == 1
    second = (np.floor(rec["arrival"][done]) % 2).astype(int)  # the window cycles: 0, 1, 0, 1, ...
    lat = _latencies_ms(result)
    assert lat.size > 150
    np.testing.assert_allclose(lat[second == 0], 1.0 + 2.0, atol=1e-3)
    np.testing.assert_allclose(lat[second == 1], 9.0 + 2.0, atol=1e-3)
    # without windows: the two seconds' round trips are drawn alike all run long
    stack.write(stack.from_run(costs), tmp_path / "flat.json")
    flat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 7.0}, "flat.json"), "least_loaded"))
    assert set(np.round(flat, 2)) == {3.0, 7.0, 11.0}  # 0.5 + 0.5, 0.5 + 4.5 or 4.5 + 4.5 ms of hops, plus 2


def test_given_draws_replace_the_service_and_the_stack_still_rounds_them_and_adds_the_wake(tmp_path: Path) -> None:
    # a live run's own seeded draws (aicp calibrate's "same" column): each agent takes its own sequence, in the order it
    # starts its tasks; the calibration's timer rounding and wake-up apply to them as to the scenario's draws
    import itertools

    from aicp.sim.engine import Simulation

    _write(tmp_path / "cal.json", timer_ms=1.0, wake_ms=[0.25], agent_overhead_ms=[0.0], client_ms=[0.0])
    sc = _scenario(tmp_path, {"dist": "exponential", "mean_ms": 50.0}, "cal.json", agents=2)
    seqs = [itertools.cycle([0.0021, 0.0038]), itertools.cycle([0.0064])]
    result = Simulation(sc, "round_robin", np.random.SeedSequence(3), draws=[seqs[0].__next__, seqs[1].__next__]).run()
    lat = _latencies_ms(result)
    assert lat.size > 150
    # round robin alternates the agents: 2.25 and 4.25 ms from the first (2.1 -> 2, 3.8 -> 4), 6.25 from the second
    assert set(np.round(lat, 9)) == {2.25, 4.25, 6.25}
    assert abs(np.mean(np.isclose(lat, 6.25)) - 0.5) < 0.01


# ----------------------------------------------------------------------------- the way in as a track in time
def _stall_track(stall_ms: float, every_s: float = 1.0, span_s: float = 20.0, base_ms: float = 0.3) -> dict[str, list[float]]:
    """A way-in track sampled every ms: the usual ``base_ms``, and once every ``every_s`` a stall of the router of
    ``stall_ms``: frames sent in it are read when it ends (each lags by what was left of it), as live."""
    t = np.arange(0.0, span_s, 0.001)
    into = np.mod(t, every_s) * 1000.0  # ms since the stall began
    lag = np.where(into < stall_ms, stall_ms - into + base_ms, base_ms)
    return {"intake_t_s": t.round(6).tolist(), "intake_ms": lag.round(4).tolist()}


def test_a_router_stall_on_the_way_in_queues_the_held_tasks_together(tmp_path: Path) -> None:
    # 2 agents, exponential 2.5 ms at 65%: a 40 ms stall once a second holds ~20 tasks, handed over at once; they queue
    # at the agents and raise the p99 by more than the stall's own lag. The same lags drawn per task (client_ms) do not.
    service = {"dist": "exponential", "mean_ms": 2.5}
    track = _stall_track(40.0, span_s=10.0)
    _write(tmp_path / "track.json", v=2, wake_ms=[], agent_overhead_ms=[0.5], client_ms=[0.0], **track)
    _write(tmp_path / "flat.json", v=2, wake_ms=[], agent_overhead_ms=[0.5], client_ms=[0.0], **_stall_track(0.0, span_s=10.0))
    _write(tmp_path / "drawn.json", v=2, wake_ms=[], agent_overhead_ms=[0.5], client_ms=track["intake_ms"])
    p99 = {}
    for name in ("track", "flat", "drawn"):
        sc = _scenario(tmp_path, service, f"{name}.json", rate=520.0, agents=2)
        poisson = [{"method": "m", "arrival": {"process": "poisson", "rate_per_s": 520.0}}]
        sc = scenario_mod.from_data({**scenario_mod.to_data(sc), "duration_s": 10.0, "workload": poisson})
        p99[name] = float(np.percentile(_latencies_ms(run(sc, "least_loaded")), 99))
    assert p99["track"] > p99["drawn"] + 6.0, p99
    assert p99["drawn"] > p99["flat"], p99


def test_a_flat_way_in_track_changes_nothing_but_the_latency_start(tmp_path: Path) -> None:
    # a track of zero lags: every task reaches the router at its intended time, as without a track, task for task
    service = {"dist": "exponential", "mean_ms": 4.0}
    _write(tmp_path / "plain.json", v=2, wake_ms=[0.2], agent_overhead_ms=[0.5, 0.9], client_ms=[1.0, 2.0])
    zero = {"intake_t_s": [0.0, 5.0, 10.0], "intake_ms": [0.0, 0.0, 0.0]}
    _write(tmp_path / "zero.json", v=2, wake_ms=[0.2], agent_overhead_ms=[0.5, 0.9], client_ms=[1.0, 2.0], **zero)
    a = run(_scenario(tmp_path, service, "plain.json", rate=300.0, agents=2), "least_loaded").records
    b = run(_scenario(tmp_path, service, "zero.json", rate=300.0, agents=2), "least_loaded").records
    for k in ("arrival", "dispatch", "end", "agent"):
        np.testing.assert_array_equal(a[k], b[k])


def test_the_way_in_keeps_the_order_and_reads_the_track_cyclically() -> None:
    from collections import deque

    intake = stack.IntakeTrack([0.0, 1.0, 2.0], [5.0, 50.0, 1.0], np.random.default_rng(1))
    intake.offset = 0.0
    assert intake.lag_at(0.5) == pytest.approx(0.005) and intake.lag_at(1.2) == pytest.approx(0.05)
    assert intake.lag_at(2.5) == pytest.approx(0.005)  # the span is 2 s: 2.5 reads 0.5
    assert intake.backlog(1.5) == pytest.approx(0.045) and intake.backlog(0.5) == 0.0  # beyond the median lag (5 ms)
    lags: deque[float] = deque()
    times = list(stack.shifted(iter([1.00, 1.01, 1.99, 2.0]), intake, lags, rows=False))
    # 1.00 and 1.01 lag 50 ms; 1.99 would lag 50 ms too; 2.0 reads 1 ms but may not overtake 1.99's 2.04
    assert times == pytest.approx([1.05, 1.06, 2.04, 2.04])
    assert list(lags) == pytest.approx([0.05, 0.05, 0.05, 0.04])


def test_a_way_in_track_must_be_one_level_with_ascending_times(tmp_path: Path) -> None:
    _write(tmp_path / "bad.json", v=2, intake_t_s=[1.0, 0.5], intake_ms=[1.0, 1.0])
    with pytest.raises(stack.CalibrationError, match="ascend"):
        stack.load(tmp_path / "bad.json")
    _write(tmp_path / "bad2.json", v=2, intake_t_s=[1.0], intake_ms=[1.0, 1.0])
    with pytest.raises(stack.CalibrationError, match="as many"):
        stack.load(tmp_path / "bad2.json")


# ----------------------------------------------------------------------------- the agent processes' stalls
def test_a_process_stall_holds_its_tasks_until_it_ends_read_at_the_track_s_offset() -> None:
    intake = stack.IntakeTrack([0.0, 10.0], [0.0, 0.0], np.random.default_rng(1), stall_s=[[(1.0, 1.05), (3.0, 3.01)], []])
    intake.offset = 0.0
    assert intake.thaw(0, 1.02) == pytest.approx(1.05)  # inside the stall: runs again at its end
    assert intake.thaw(0, 1.05) == 1.05 and intake.thaw(0, 0.99) == 0.99  # [start, end): not at or before
    assert intake.thaw(0, 11.0) == pytest.approx(11.05)  # cyclic over the track's 10 s
    assert intake.thaw(1, 1.02) == 1.02  # the other process never stalled
    intake.offset = 2.0  # the replication's offset moves every stall: t = 1.005 reads the track at 3.005
    assert intake.thaw(0, 1.005) == pytest.approx(1.01)


def _stalled_run(tmp_path: Path, procs: list[int], stall_s: list[list[tuple[float, float]]]) -> np.ndarray:
    """Latencies (ms) of 2 agents, constant 10 ms, 150 tasks/s round robin, on a track whose process 0 stalls."""
    from aicp.sim.engine import Simulation

    flat = {"intake_t_s": [0.0, 20.0], "intake_ms": [0.0, 0.0]}
    _write(tmp_path / "s.json", v=2, wake_ms=[], agent_overhead_ms=[0.0], client_ms=[0.0], stall_s=stall_s, **flat)
    sc = _scenario(tmp_path, {"dist": "constant", "mean_ms": 10.0}, "s.json", rate=150.0, agents=2)
    return _latencies_ms(Simulation(sc, "round_robin", np.random.SeedSequence(3), procs=procs).run())


def test_a_process_stall_delays_every_task_its_agents_hold_at_once(tmp_path: Path) -> None:
    # process 0 stalls 30 ms once a second. Without stalls every task takes its 10 ms; with them, the tasks its agents
    # hold or receive meanwhile end at the stall's end (at most 10 + 30 ms); two agents in that process, twice as many
    stalls = [[(k + 0.5, k + 0.53) for k in range(20)], []]
    none = _stalled_run(tmp_path, [0, 1], [[], []])
    np.testing.assert_allclose(none, 10.0, atol=1e-9)
    one = _stalled_run(tmp_path, [0, 1], stalls)  # agent 0 in the stalling process, agent 1 not
    both = _stalled_run(tmp_path, [0, 0], stalls)
    late_one, late_both = int(np.sum(one > 10.001)), int(np.sum(both > 10.001))
    assert one.max() <= 40.0 + 1e-6 and both.max() <= 40.0 + 1e-6 and both.max() > 35.0
    # a 30 ms stall holds the task in the slot and the ~2 sent meanwhile, and at 75% busy the queue takes ~0.1 s to
    # drain: several tasks a stall for each agent it stalls
    assert 19 * 3 <= late_one <= 19 * 12, late_one
    assert 1.7 * late_one <= late_both <= 2.3 * late_one, (late_one, late_both)


def test_stalls_need_a_way_in_track_and_disjoint_ascending_intervals(tmp_path: Path) -> None:
    _write(tmp_path / "a.json", v=2, stall_s=[[(1.0, 2.0)]])
    with pytest.raises(stack.CalibrationError, match="needs an intake track"):
        stack.load(tmp_path / "a.json")
    flat = {"intake_t_s": [0.0, 20.0], "intake_ms": [0.0, 0.0]}
    for bad in ([[(1.0, 2.0), (1.5, 3.0)]], [[(2.0, 1.0)]]):
        _write(tmp_path / "b.json", v=2, stall_s=bad, **flat)
        with pytest.raises(stack.CalibrationError, match="disjoint"):
            stack.load(tmp_path / "b.json")
