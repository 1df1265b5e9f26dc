"""aicp.lab.calibrate: per-task stack costs from a router trace and a load generator's samples (synthetic files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aicp import trace
from aicp.lab import calibrate
from aicp.live.handlers import SLEEP_LEAD_MS
from aicp.sim import stack

T0 = 1_700_000_000.0  # router clock (epoch seconds)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """Three tasks from gen-a on one agent (concurrency 1), one from another requester.

    Task 1: dispatched idle at +1.000, result +1.006 with service 4.2 ms -> overhead 1.8 ms.
    Task 2: dispatched at +1.004 while task 1 is in hand -> not idle, no overhead sample.
    Task 3: dispatched idle at +2.000, result +2.003, service 2.5 ms -> overhead 0.5 ms.
    The generator's clock starts elsewhere: only differences are used.
    """
    ev: list[trace.TraceEvent] = [
        trace.Header(t=T0, v=1, router="r", strategy="least_loaded"),
        trace.AgentUp(t=T0, agent="a", capabilities=["m"], concurrency=1),
    ]

    def task(name: str, arrive: float, result: float, service: float, end: float, requester: str = "gen-a") -> None:
        tid = f"{requester}\n{name}"
        ev.append(trace.Arrive(t=T0 + arrive, task=tid, method="m", bytes=10))
        ev.append(trace.Dispatch(t=T0 + arrive, task=tid, agent="a", attempt=1))
        ev.append(trace.Reply(t=T0 + result, task=tid, agent="a", ok=True, service_ms=service))
        ev.append(trace.End(t=T0 + end, task=tid, outcome="completed", attempts=1, agent="a"))

    task("1", 1.000, 1.006, 4.2, 1.006)
    task("x", 1.002, 1.0021, 0.0, 1.0021, requester="gen-b")  # another generator's task: not ours, but it occupies nothing
    task("2", 1.004, 1.012, 5.0, 1.012)
    task("3", 2.000, 2.003, 2.5, 2.003)
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(trace.encode(e) for e in ev))
    gen = tmp_path / "gen.npz"
    # generator clock: intended, sent, done; latencies 7, 9.5, 4 ms against router spans 6, 8, 3 ms
    np.savez(
        gen,
        intended=np.array([1.0, 1.5, 2.0]),
        sent=np.array([1.0005, 1.5, 1.9995]),
        done=np.array([1.007, 1.5095, 2.004]),
        outcome=np.array([0, 0, 0], dtype=np.int16),
    )
    return path, gen


def test_analyse_takes_service_overhead_of_idle_dispatches_and_client_time(tmp_path: Path) -> None:
    path, gen = _files(tmp_path)
    got = calibrate.analyse(path, gen, "gen-a", concurrency=1, skip_s=0.0)
    np.testing.assert_allclose(got["service_ms"], [4.2, 5.0, 2.5])
    np.testing.assert_allclose(got["overhead_ms"], [1.8, 0.5], atol=1e-3)
    # client: generator latency from min(intended, sent) (a late send's lag is charged, an early
    # send is not credited) minus the router's arrive-to-end span
    np.testing.assert_allclose(got["client_ms"], [7.0 - 6.0, 9.5 - 8.0, 4.5 - 3.0], atol=1e-3)


def test_the_way_in_and_the_part_after_the_router_add_up_to_the_client_part(tmp_path: Path) -> None:
    path, gen = _files(tmp_path)
    # the generator's clock started 2 ms before the router's T0: task 1, intended at 1.0 and read at T0 + 1.000, lagged 2 ms
    Path(f"{gen}.json").write_text(json.dumps({"start_wall": T0 - 0.002}))
    t, lag, after = calibrate.intake_track(path, gen, "gen-a", skip_s=0.0)
    np.testing.assert_allclose(t, [1.0, 1.5, 2.0])
    assert lag[0] == pytest.approx(2.0, abs=1e-3)
    client = calibrate.analyse(path, gen, "gen-a", concurrency=1, skip_s=0.0)["client_ms"]
    np.testing.assert_allclose(lag + after, client, atol=1e-3)
    t, _, _ = calibrate.intake_track(path, gen, "gen-a", skip_s=1.2)  # the warm-up's tasks left out, times from its end
    np.testing.assert_allclose(t, [0.3, 0.8])


def test_analyse_with_two_slots_counts_the_second_dispatch_as_idle(tmp_path: Path) -> None:
    path, gen = _files(tmp_path)
    got = calibrate.analyse(path, gen, "gen-a", concurrency=2, skip_s=0.0)
    np.testing.assert_allclose(got["overhead_ms"], [1.8, 8.0 - 5.0, 0.5], atol=1e-3)


def test_analyse_refuses_a_generator_that_does_not_match_the_trace(tmp_path: Path) -> None:
    path, _ = _files(tmp_path)
    short = tmp_path / "short.npz"
    np.savez(short, intended=np.array([1.0]), sent=np.array([1.0]), done=np.array([1.1]), outcome=np.array([0], dtype=np.int16))
    with pytest.raises(RuntimeError, match="3 arrivals from gen-a but the load generator sent 1"):
        calibrate.analyse(path, short, "gen-a")


def test_a_written_calibration_loads_back(tmp_path: Path) -> None:
    level = stack.Level(rate_per_s=100.0, wake_ms=[0.2], agent_overhead_ms=[0.4], client_ms=[0.6])
    cal = stack.Calibration(v=stack.CALIBRATION_VERSION, slot_ms=0.03, levels=[level], measured={"at": "now"})
    calibrate.write(cal, tmp_path / "c.json")
    back = stack.load(tmp_path / "c.json")
    assert back == cal
    assert "wake mean 0.200" in calibrate.describe(back)
    assert calibrate.expected_stack(back, 500.0) == pytest.approx(
        {"wake_mean_ms": 0.2, "agent_overhead_mean_ms": 0.4, "client_mean_ms": 0.6}
    )


def test_busy_gaps_take_back_to_back_tasks_only(tmp_path: Path) -> None:
    ev: list[trace.TraceEvent] = [trace.Header(t=T0, v=1, router="r", strategy="least_loaded")]
    # (task, dispatch, result, service): 2 waits for 1 (dispatched before 1's result), 3 finds the agent idle
    for name, t_d, t_r, svc in (("1", 0.000, 0.0050, 4.0), ("2", 0.001, 0.0095, 4.1), ("3", 0.020, 0.0250, 4.0)):
        ev.append(trace.Dispatch(t=T0 + t_d, task=name, agent="a", attempt=1))
        ev.append(trace.Reply(t=T0 + t_r, task=name, agent="a", ok=True, service_ms=svc))
    path = tmp_path / "busy.jsonl"
    path.write_bytes(b"".join(trace.encode(e) for e in ev))
    np.testing.assert_allclose(calibrate.busy_gaps(path), [4.5 - 4.1], atol=1e-3)


GRID = Path(__file__).resolve().parents[2] / "scenarios" / "calibration"


@pytest.mark.parametrize("path", sorted(GRID.rglob("*.toml")), ids=lambda p: p.stem)
def test_each_grid_workload_runs_live_as_its_file_says_and_is_in_the_issue_s_range(path: Path) -> None:
    from aicp.sim import scenario as sc_mod

    sc = sc_mod.load(path)
    group, work = sc.agents[0], sc.workload[0]
    args = calibrate.bench_args(agent_procs=2, live_duration=10.0, live_samples=4000, live_warmup=2.0, seed=1)
    for strategy in sc.strategies:
        cfg = calibrate.live_args_for(sc, path, strategy, args)
        assert (cfg.agents, cfg.agent_concurrency, cfg.strategy) == (group.count, group.concurrency, strategy)
        assert cfg.service_time == f"{type(group.service_time).__struct_config__.tag}:{group.service_time.mean_ms:g}"  # type: ignore[union-attr]
        assert cfg.rate == work.arrival.rate_per_s  # type: ignore[union-attr]
        assert cfg.sleep_lead_ms == SLEEP_LEAD_MS  # what wake_from_run and the 'same' column round the draws at
    busy = work.arrival.rate_per_s * group.service_time.mean_ms / 1000.0 / (group.count * group.concurrency)  # type: ignore[union-attr]
    assert 0.5 <= busy <= 0.85 and 2 <= group.count <= 16 and 1 <= group.concurrency <= 4
    assert 2.0 <= group.service_time.mean_ms <= 20.0  # type: ignore[union-attr]
    assert sorted(sc.strategies) == ["least_loaded", "round_robin"]


def test_the_grid_refuses_what_the_live_agents_cannot_run_and_passes_a_lognormal_s_sigma(tmp_path: Path) -> None:
    from aicp.sim import scenario as sc_mod

    path = GRID / "g3_logn20_a8c2.toml"
    args = calibrate.bench_args(agent_procs=2, live_duration=10.0, live_samples=4000, live_warmup=2.0, seed=1)
    sc = sc_mod.load(path, {"agents.0.service_time.sigma": 1.0})
    cfg = calibrate.live_args_for(sc, path, "least_loaded", args)
    assert cfg.agent_sigma == 1.0 and cfg.service_time == "lognormal:20"
    # the same column regenerates the live agents' draws with that sigma
    from aicp.live.handlers import Synthetic

    want = Synthetic("lognormal", 20.0, sigma=1.0, seed=7 + 3)
    draws = calibrate.live_draws(cfg, 3, 7)
    assert [draws() for _ in range(5)] == [want.service_time_s() for _ in range(5)]
    assert calibrate.live_args_for(sc_mod.load(GRID / "g1_exp6_a4c1.toml"), path, "round_robin", args).agent_sigma is None
    with pytest.raises(SystemExit, match="failures"):
        calibrate.live_args_for(sc_mod.load(path, {"agents.0.fail_prob": 0.1}), path, "least_loaded", args)


def test_the_fleet_passes_the_sigma_to_the_agents_and_the_agents_draw_with_it(tmp_path: Path) -> None:
    import argparse

    from aicp.cli import agent as agent_cli
    from aicp.lab.bench import live
    from aicp.live.handlers import Synthetic

    spawned: list[list[str]] = []

    class Spawner:  # records what live.start_agents would start
        def spawn(self, role: str, argv: list[str]) -> None:
            spawned.append(argv)

    cfg = calibrate.bench_args(agents=3, agent_procs=2, service_time="lognormal:8", agent_concurrency=1, agent_seed=5, agent_sigma=0.8)
    live.start_agents(Spawner(), "ws://127.0.0.1:1", cfg)  # type: ignore[arg-type]
    assert len(spawned) == 2 and all(argv[argv.index("--service-sigma") + 1] == "0.8" for argv in spawned)
    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    argv = ["--id", "a", "--capability", "m", "--service-time", "lognormal:8", "--key", str(tmp_path / "k"), "--seed", "5"]
    (agent,) = agent_cli.build_agents(parser.parse_args([*argv, "--service-sigma", "0.8"]))
    handler = agent.client.handlers["m"].handler
    want = Synthetic("lognormal", 8.0, sigma=0.8, seed=5)
    assert isinstance(handler, Synthetic) and [handler.service_time_s() for _ in range(5)] == [want.service_time_s() for _ in range(5)]
    (plain,) = agent_cli.build_agents(parser.parse_args(argv))
    assert plain.client.handlers["m"].handler.sigma == 0.5  # type: ignore[attr-defined]


def test_a_run_calibration_takes_the_run_s_handler_times_hops_and_client_part(tmp_path: Path) -> None:
    path, _ = _files(tmp_path)
    costs = stack.costs_from_trace(trace.parse(path.read_bytes()))
    live_result = {"costs": costs, "client_ms": np.array([0.5, 1.5])}
    cal = calibrate.run_calibration(live_result, path, fallback_slot_ms=0.07)
    (lv,) = cal.levels
    assert sorted(lv.handler_ms) == [0.0, 2.5, 4.2, 5.0]  # every completed task, the other generator's too
    np.testing.assert_allclose(sorted(lv.agent_overhead_ms), sorted(costs.overhead_ms), atol=1e-4)
    assert lv.client_ms == [0.5, 1.5] and lv.wake_ms == [] and cal.timer_ms == 0.0
    assert cal.slot_ms == 0.07  # one wait in the trace: too few, the fallback
    assert calibrate.run_calibration({"costs": costs, "client_ms": np.array([])}, path, 0.0).levels[0].client_ms == []


def test_the_grid_s_live_agents_draw_the_same_service_times_in_each_strategy_s_run_and_queue_without_a_cap() -> None:
    from aicp.sim import scenario as sc_mod

    path = GRID / "g6_exp2.5_a2c1.toml"
    sc = sc_mod.load(path)
    args = calibrate.bench_args(agent_procs=2, live_duration=10.0, live_samples=4000, live_warmup=2.0, seed=3, fresh_draws=False)
    cfgs = [calibrate.live_args_for(sc, path, strategy, args) for strategy in sc.strategies]
    assert {(c.agent_seed, c.agent_max_queued) for c in cfgs} == {(3 + calibrate.AGENT_SEED_OFFSET, calibrate.GRID_AGENT_QUEUE)}
    args.fresh_draws = True
    assert calibrate.live_args_for(sc, path, "round_robin", args).agent_seed is None


def test_a_row_whose_live_run_or_other_run_failed_tasks_is_flagged_for_a_rerun() -> None:
    ok = {"errors": {}, "lost": 0, "throughput_per_s": 520.0}
    broken = {"errors": {"agent-failed": 148}, "lost": 0, "throughput_per_s": 507.0}
    slow = {"errors": {}, "lost": 0, "throughput_per_s": 400.0}
    assert not calibrate.failed(ok) and calibrate.failed(broken) and calibrate.failed({**ok, "lost": 1})
    assert calibrate.overloaded(slow, 520.0) and not calibrate.failed(slow)

    def row(live: dict, other: dict) -> dict:
        return {"live_overloaded": calibrate.overloaded(live, 520.0), "live_failed": calibrate.failed(live), "other_failed": calibrate.failed(other)}

    assert calibrate.flags(row(ok, ok)) == ""
    assert calibrate.flags(row(broken, ok)) == "  LIVE FAILED (rerun)"
    assert calibrate.flags(row(slow, broken)) == "  LIVE OVERLOADED  OTHER RUN FAILED"


def test_seeded_agents_draw_from_seed_plus_their_index_and_take_a_queue_cap(tmp_path: Path) -> None:
    import argparse

    from aicp.cli import agent as agent_cli
    from aicp.live.handlers import Synthetic

    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    argv = ["--id", "a", "--count", "2", "--capability", "m", "--service-time", "exponential:3", "--key", str(tmp_path / "k")]
    agents = agent_cli.build_agents(parser.parse_args([*argv, "--seed", "5", "--max-queued", "7"]))
    assert [a.client.max_queued for a in agents] == [7, 7]
    for i, a in enumerate(agents):
        handler = a.client.handlers["m"].handler
        assert isinstance(handler, Synthetic)
        want = Synthetic("exponential", 3.0, seed=5 + i)
        assert [handler.service_time_s() for _ in range(5)] == [want.service_time_s() for _ in range(5)]
    default = agent_cli.build_agents(parser.parse_args([*argv, "--concurrency", "2"]))
    assert [a.client.max_queued for a in default] == [32, 32]  # 16 x concurrency, as before


def test_the_live_runs_go_a_b_b_a_and_their_blocks_pool_into_one_run_s_costs(tmp_path: Path) -> None:
    assert calibrate.block_plan(["ll", "rr"], 2) == [(0, "ll"), (0, "rr"), (1, "rr"), (1, "ll")]
    assert calibrate.block_plan(["ll", "rr"], 1) == [(0, "ll"), (0, "rr")]
    # a run longer than --block-s x --blocks is cut into more parts, an even number: A B B A A B B A for 40 s of 10 s parts
    assert [calibrate.block_count(d, 2, 10.0) for d in (10.0, 20.0, 20.5, 30.0, 40.0, 41.0)] == [2, 2, 4, 4, 4, 6]
    assert calibrate.block_count(40.0, 2, 0.0) == 2 and calibrate.block_count(40.0, 1, 50.0) == 1
    assert [st for _, st in calibrate.block_plan(["ll", "rr"], 4)] == ["ll", "rr", "rr", "ll", "ll", "rr", "rr", "ll"]
    path, _ = _files(tmp_path)
    one = stack.costs_from_trace(trace.parse(path.read_bytes()))
    both = stack.RunCosts.concat([one, one])
    assert both.handler_ms.tolist() == one.handler_ms.tolist() * 2 and both.idle_ms.size == 2 * one.idle_ms.size
    assert len(both.windows) == 2 * len(one.windows) and both.rate_per_s == pytest.approx(one.rate_per_s)
    assert stack.RunCosts.concat([one]) is one


def test_the_grid_s_agents_draw_from_seeds_apart_from_the_load_generator_s() -> None:
    # agent 0 used to draw from random.Random(seed), the load generator's own stream: its k-th service time was the
    # k-th arrival gap, scaled
    from aicp.lab.bench.loadgen import poisson_gaps
    from aicp.live.handlers import Synthetic
    from aicp.sim import scenario as sc_mod

    path = GRID / "g6_exp2.5_a2c1.toml"
    args = calibrate.bench_args(agent_procs=2, live_duration=10.0, live_samples=4000, live_warmup=2.0, seed=3, fresh_draws=False)
    cfg = calibrate.live_args_for(sc_mod.load(path), path, "round_robin", args)
    gaps = poisson_gaps(cfg.seed, cfg.rate)
    arrivals = np.array([next(gaps) for _ in range(500)])
    agent0 = Synthetic("exponential", 2.5, seed=cfg.agent_seed).service_time_s
    assert abs(np.corrcoef(arrivals, [agent0() for _ in range(500)])[0, 1]) < 0.2
    same = Synthetic("exponential", 2.5, seed=cfg.seed).service_time_s  # the old seeding
    assert np.corrcoef(arrivals, [same() for _ in range(500)])[0, 1] > 0.99


def test_fleet_indexes_name_the_agents_as_the_fleet_starts_them() -> None:
    assert calibrate.fleet_indexes(2, 2) == {"bench-0": 0, "bench-1": 1}
    assert calibrate.fleet_indexes(3, 2) == {"bench-0": 0, "bench-1-0": 1, "bench-1-1": 2}
    assert calibrate.fleet_indexes(4, 2) == {"bench-0-0": 0, "bench-0-1": 1, "bench-1-0": 2, "bench-1-1": 3}


def _seeded_run(
    tmp_path: Path, wake: float, agent_seed: int = 7, lead_ms: float | None = None, late: dict[int, float] | None = None, requester: str = "g"
) -> tuple[Path, object]:
    """Two live agents (bench-0, bench-1) drawing exponential 5 ms from agent_seed + index, round robin, each
    handler time the draw rounded to whole ms plus ``wake``; the first task arrives in the warm-up. ``lead_ms``: the
    agents asked their timer for the draw less it (the run's ``sleep_lead_ms``); None: agents before the lead.
    ``late``: task index -> ms more its agent woke late. Task ``i`` is ``requester``'s, sent at 0.1 i s."""
    import argparse

    from aicp.live.handlers import Synthetic

    cfg = argparse.Namespace(agents=2, agent_procs=2, service_time="exponential:5", warmup=0.5)
    if lead_ms is not None:
        cfg.sleep_lead_ms = lead_ms
    draws = [Synthetic("exponential", 5.0, seed=agent_seed + k).service_time_s for k in range(2)]
    ev: list[trace.TraceEvent] = [trace.Header(t=T0, v=1, router="r", strategy="round_robin")]
    ev += [trace.AgentUp(t=T0, agent=f"bench-{k}", capabilities=["m"], concurrency=1) for k in (1, 0)]
    for i in range(40):
        t, agent = T0 + 0.1 * i, i % 2
        service = round(max(0.0, draws[agent]() * 1000.0 - (lead_ms or 0.0))) + wake + (late or {}).get(i, 0.0)
        tid = f"{requester}\n{i}"
        ev.append(trace.Arrive(t=t, task=tid, method="m", bytes=1))
        ev.append(trace.Dispatch(t=t, task=tid, agent=f"bench-{agent}", attempt=1))
        ev.append(trace.Reply(t=t + 0.05, task=tid, agent=f"bench-{agent}", ok=True, service_ms=service))
        ev.append(trace.End(t=t + 0.05, task=tid, outcome="completed", attempts=1, agent=f"bench-{agent}"))
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(trace.encode(e) for e in ev))
    return path, cfg


def test_wake_ups_are_read_over_each_agent_s_seeded_draws_in_dispatch_order(tmp_path: Path) -> None:
    path, cfg = _seeded_run(tmp_path, wake=0.25)
    wake = calibrate.wake_from_run(path, cfg, 7)  # type: ignore[arg-type]
    assert wake.size == 35  # the 5 tasks of the warm-up draw, but are not measured
    np.testing.assert_allclose(wake, 0.25, atol=1e-9)
    assert calibrate.joined(path) == ["bench-1", "bench-0"]
    with pytest.raises(stack.CalibrationError, match="seeded draws"):
        calibrate.wake_from_run(path, cfg, 8)  # type: ignore[arg-type]  # other seeds: the handler times do not follow


def test_wake_ups_are_read_over_the_draws_less_the_agents_lead_and_the_same_column_carries_that_lead(tmp_path: Path) -> None:
    path, cfg = _seeded_run(tmp_path, wake=0.25, lead_ms=0.3)
    np.testing.assert_allclose(calibrate.wake_from_run(path, cfg, 7), 0.25, atol=1e-9)  # type: ignore[arg-type]
    del cfg.sleep_lead_ms  # type: ignore[attr-defined]  # read as a run of agents before the lead: rounded at the draw
    wrong = calibrate.wake_from_run(path, cfg, 7)  # type: ignore[arg-type]
    assert np.mean(np.isclose(wrong, 0.25)) < 0.9 and set(np.round(wrong, 6)) <= {0.25, -0.75}
    cfg.sleep_lead_ms = 0.3  # type: ignore[attr-defined]
    runs = [stack.costs_from_trace(trace.parse(path.read_bytes()), skip_s=0.5)]
    lv = {"tags": ["run"], "seeds": [(1, 7)], "costs": runs[0], "client_ms": np.full(35, 0.5), "block_costs": runs, "block_client": [np.full(35, 0.5)]}
    cal = calibrate.same_calibration(lv, cfg, tmp_path, 0.07)  # type: ignore[arg-type]
    assert (cal.timer_ms, cal.lead_ms) == (1.0, 0.3)
    np.testing.assert_allclose(cal.levels[0].wake_ms, 0.25, atol=1e-9)


def test_the_same_costs_of_one_block_are_that_block_s_alone(tmp_path: Path) -> None:
    runs = []
    for b, wake in enumerate((0.25, 0.75)):
        (tmp_path / f"b{b}").mkdir()
        path, cfg = _seeded_run(tmp_path / f"b{b}", wake=wake)
        path.rename(tmp_path / f"w-b{b}.jsonl")
        runs.append(stack.costs_from_trace(trace.parse((tmp_path / f"w-b{b}.jsonl").read_bytes()), skip_s=0.5))
    clients = [np.full(30, 0.5), np.full(30, 1.5)]
    lv = {"tags": ["w-b0", "w-b1"], "seeds": [(1, 7), (1001, 7)], "costs": stack.RunCosts.concat(runs),
          "client_ms": np.concatenate(clients), "block_costs": runs, "block_client": clients}
    one = calibrate.same_calibration(lv, cfg, tmp_path, 0.07, block=1)  # type: ignore[arg-type]
    np.testing.assert_allclose(one.levels[0].wake_ms, 0.75, atol=1e-9)
    assert set(one.levels[0].client_ms) == {1.5} and one.measured["from_run"] == [str(tmp_path / "w-b1.jsonl")]
    both = calibrate.same_calibration(lv, cfg, tmp_path, 0.07)  # type: ignore[arg-type]
    assert sorted(set(np.round(both.levels[0].wake_ms, 6))) == [0.25, 0.75] and set(both.levels[0].client_ms) == {0.5, 1.5}


def test_stalls_count_the_tasks_whose_agent_woke_late_over_its_seeded_draw(tmp_path: Path) -> None:
    path, cfg = _seeded_run(tmp_path, wake=0.25)
    events = list(trace.parse(path.read_bytes()))
    late = [i for i, e in enumerate(events) if isinstance(e, trace.Reply)][-3:]  # three measured tasks: a stalled process
    for i, extra in zip(late, (30.0, 12.0, 5.0), strict=True):
        e = events[i]
        assert isinstance(e, trace.Reply) and e.service_ms is not None
        events[i] = trace.Reply(t=e.t, task=e.task, agent=e.agent, ok=True, service_ms=e.service_ms + extra)
    path.with_name("s.jsonl").write_bytes(b"".join(trace.encode(e) for e in events))
    got = calibrate.stalls(tmp_path, ["run", "s"], [(1, 7), (1, 7)], cfg)  # type: ignore[arg-type]
    assert got == {"tasks": 2, "max_wake_ms": pytest.approx(30.25), "of": 70}
    assert calibrate.stalls(tmp_path, ["run"], [(1, None)], cfg) is None  # type: ignore[arg-type]  # unseeded: no draws to read against
    assert "2 of 70 tasks" in calibrate.stall_text(got) and calibrate.stall_text(None) == ""


def test_the_same_column_simulates_the_seeded_arrivals_and_draws(tmp_path: Path) -> None:
    import argparse

    from aicp.lab.bench.loadgen import poisson_gaps
    from aicp.sim import scenario as sc_mod

    path = GRID / "g6_exp2.5_a2c1.toml"
    sc = sc_mod.load(path)
    sc = sc_mod.from_data({**sc_mod.to_data(sc), "replications": 1}, sc.name)
    cal = tmp_path / "cal.json"
    cal.write_text('{"v": 2, "timer_ms": 1.0, "slot_ms": 0.0, "levels": [{"rate_per_s": 520, "wake_ms": [0.0], '
                   '"agent_overhead_ms": [0.0], "client_ms": []}]}')
    cfg = argparse.Namespace(agents=2, agent_procs=2, service_time="exponential:2.5", warmup=0.5, duration=2.0, rate=520.0)
    got = calibrate.run_sim_same(sc, "round_robin", cal, cfg, [(3, 103, ["bench-0", "bench-1"])], tmp_path)
    again = calibrate.run_sim_same(sc, "round_robin", cal, cfg, [(3, 103, ["bench-0", "bench-1"])], tmp_path)
    assert got == again and got["p50"] > 0  # nothing is drawn but the costs (none here): the same workload, the same answer
    other = calibrate.run_sim_same(sc, "round_robin", cal, cfg, [(4, 104, ["bench-0", "bench-1"])], tmp_path)
    assert other["p50"] != got["p50"]
    written = np.loadtxt(tmp_path / f"{sc.name}-round_robin-b0-arrivals.csv", skiprows=1)
    gaps = poisson_gaps(4, 520.0)
    want = np.cumsum([next(gaps) for _ in range(written.size)])
    np.testing.assert_allclose(written, want, rtol=1e-12)
    assert written[-1] < 2.5 <= want[-1] + next(gaps)
    # one calibration per block (--same-costs block): block k simulated with its own; the same file twice = the file for both
    slow = tmp_path / "slow.json"
    slow.write_text(cal.read_text().replace('"agent_overhead_ms": [0.0]', '"agent_overhead_ms": [4.0]'))
    two = [(3, 103, ["bench-0", "bench-1"]), (4, 104, ["bench-0", "bench-1"])]
    pooled = calibrate.run_sim_same(sc, "round_robin", cal, cfg, two, tmp_path)
    assert calibrate.run_sim_same(sc, "round_robin", [cal, cal], cfg, two, tmp_path) == pooled
    assert calibrate.run_sim_same(sc, "round_robin", [cal, slow], cfg, two, tmp_path)["p50"] > pooled["p50"]
    with pytest.raises(ValueError, match="2 blocks"):
        calibrate.run_sim_same(sc, "round_robin", [cal], cfg, two, tmp_path)


def test_the_bias_lines_average_each_column_s_signed_error_per_strategy_leaving_failed_runs_out() -> None:
    def row(st: str, live: float, pred: float, **flags: bool) -> dict[str, object]:
        return {"strategy": st, "live_p50": live, "live_p99": live, "same_p50": pred, "same_p99": pred, **flags}

    rows = [row("rr", 100.0, 80.0), row("rr", 100.0, 90.0), row("rr", 100.0, 10.0, live_failed=True), row("ll", 50.0, 55.0)]
    got = {(b["strategy"], b["q"]): b for b in calibrate.bias(rows, ["same"])}
    rr = got[("rr", "p99")]
    assert rr["rows"] == 2 and rr["mean"] == pytest.approx(-0.15) and rr["low"] == 2 and rr["high"] == 0
    assert rr["se"] == pytest.approx(np.std([-0.2, -0.1], ddof=1) / np.sqrt(2))
    assert got[("ll", "p50")]["mean"] == pytest.approx(0.1) and np.isnan(got[("ll", "p50")]["se"])


def test_a_part_run_again_is_named_in_its_result_and_flags_the_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_run(cfg: object, run_dir: Path, tag: str) -> dict[str, object]:  # the live run itself is tested live elsewhere
        calls.append(tag)
        (run_dir / f"{tag}.jsonl").write_text("x")
        return {"errors": {"timeout": 1} if len(calls) == 1 else {}, "lost": 0}

    monkeypatch.setattr(calibrate, "run_live", fake_run)
    cfg = calibrate.bench_args()
    got = calibrate.run_live_retrying(cfg, tmp_path, "w-b0", 2)
    assert calls == ["w-b0", "w-b0"] and got["retried"] == [{"files": "w-b0-failed1", "why": "1 failed and 0 lost tasks"}]
    assert (tmp_path / "w-b0-failed1.jsonl").exists() and (tmp_path / "w-b0.jsonl").exists()
    row = {"live_overloaded": False, "live_retried": got["retried"]}
    assert "1 PART(S) RUN AGAIN" in calibrate.flags(row) and calibrate.flags({**row, "live_retried": []}) == ""


def test_a_live_run_is_disturbed_when_tasks_failed_or_seeded_handlers_do_not_follow_their_draws(tmp_path: Path) -> None:
    ok = {"errors": {}, "lost": 0}
    path, cfg = _seeded_run(tmp_path, wake=0.4)
    cfg.record, cfg.agent_seed = path, 7  # type: ignore[attr-defined]
    assert calibrate.disturbed(ok, cfg) == ""  # type: ignore[arg-type]
    assert "failed" in calibrate.disturbed({"errors": {"timeout": 2}, "lost": 0}, cfg)  # type: ignore[arg-type]
    (tmp_path / "starved").mkdir()
    starved, cfg2 = _seeded_run(tmp_path / "starved", wake=3.0)  # every handler 3 ms over its draw: the agents waited for a CPU
    cfg2.record, cfg2.agent_seed = starved, 7  # type: ignore[attr-defined]
    assert "seeded draws" in calibrate.disturbed(ok, cfg2)  # type: ignore[arg-type]
    cfg2.agent_seed = None  # type: ignore[attr-defined]  # unseeded agents (--fresh-draws): nothing to compare with
    assert calibrate.disturbed(ok, cfg2) == ""  # type: ignore[arg-type]


def _costs(handler_ms: float, gap_ms: float, rate: float, n: int = 200) -> stack.RunCosts:
    h = np.full(n, handler_ms)
    return stack.RunCosts(h, np.ones(n), np.ones(n), np.full(n, gap_ms), rate, 1.0, [])


def test_a_part_s_busy_fraction_is_its_rate_times_handler_and_slot_gap_per_slot() -> None:
    # g6 of 2026-11-28 21:53: 520/s on 2 slots, 2.92 ms handlers, 0.11 ms slot gaps
    assert calibrate.busy_fraction(_costs(2.92, 0.11, 520.0), 2) == pytest.approx(520.0 * 3.03 / 1000.0 / 2)
    assert calibrate.busy_fraction(_costs(2.92, -0.5, 520.0), 2) == pytest.approx(520.0 * 2.92 / 1000.0 / 2)  # no negative gap
    assert np.isnan(calibrate.busy_fraction(stack.RunCosts(np.array([]), *(np.array([]),) * 3, 1.0, 1.0, []), 2))


def test_a_pair_of_parts_that_kept_the_slots_busy_differently_is_flagged_and_a_close_pair_is_not() -> None:
    steady, slow = _costs(2.90, 0.11, 520.0), _costs(3.25, 0.12, 520.0)  # 0.78 vs 0.88 busy: 1 / (1 - busy) x1.8
    close = _costs(2.95, 0.11, 520.0)  # 0.80: x1.06
    drift = calibrate.pair_drift([steady, steady], [close, slow], 2)
    assert [round(d["busy"], 2) for d in drift] == [0.78, 0.78] and [round(d["other_busy"], 2) for d in drift] == [0.80, 0.88]
    assert not calibrate.moved(drift[0]["factor"]) and calibrate.moved(drift[1]["factor"])
    assert calibrate.drift_text(drift) == "  PAIR COSTS MOVED (part 1: busy 0.78 vs 0.88)"
    assert calibrate.moved(calibrate.pair_drift([steady], [_costs(4.0, 0.1, 520.0)], 2)[0]["factor"])  # past saturation
    assert not calibrate.moved(float("nan"))
    row = {"live_overloaded": False, "live_pair_drift": drift}
    assert "PAIR COSTS MOVED (part 1" in calibrate.flags(row) and calibrate.flags({**row, "live_pair_drift": drift[:1]}) == ""


def test_a_pair_whose_costs_moved_is_run_again_and_its_first_files_kept_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_run(cfg: object, run_dir: Path, tag: str, retries: int) -> dict[str, object]:  # live runs are tested live elsewhere
        calls.append(tag)
        (run_dir / f"{tag}.jsonl").write_text("x")
        slow = len(calls) == 2  # the second run of the first attempt ran on a slower machine
        return {"costs": _costs(3.25 if slow else 2.90, 0.11, 520.0), "retried": []}

    monkeypatch.setattr(calibrate, "run_live_retrying", fake_run)
    args = calibrate.bench_args()
    args.live_retries, args.seed = 1, 1
    cfgs = {st: calibrate.bench_args(agent_seed=None, duration=40.0) for st in ("least_loaded", "round_robin")}
    got = calibrate.run_pair(["round_robin", "least_loaded"], 3, 4, cfgs, "w", tmp_path, args, 2)
    assert calls == ["w-round_robin-b3", "w-least_loaded-b3"] * 2
    assert got["least_loaded"]["retried"][0]["files"] == "w-least_loaded-b3-moved1" and len(got["least_loaded"]["retried"]) == 1
    assert "pair costs moved" in got["round_robin"]["retried"][0]["why"]
    assert (tmp_path / "w-least_loaded-b3-moved1.jsonl").exists() and (tmp_path / "w-least_loaded-b3.jsonl").exists()
    assert got["least_loaded"]["seeds"] == (3001, None) and got["least_loaded"]["tag"] == "w-least_loaded-b3"
    calls.clear()
    args.live_retries = 0  # no retry left: the moved pair is kept (and flagged in its row)
    got = calibrate.run_pair(["least_loaded", "round_robin"], 0, 4, cfgs, "v", tmp_path, args, 2)
    assert calls == ["v-least_loaded-b0", "v-round_robin-b0"] and got["round_robin"]["retried"] == []


def test_block_tracks_chain_into_one_ascending_track() -> None:
    # the second block starts one mean gap (1 s) after the first's last time
    assert calibrate.chain_tracks([np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5])]).tolist() == [0.0, 1.0, 2.0, 3.5, 4.5]
    # a block of a single task: the next starts 1 s after that task, never before it
    chained = calibrate.chain_tracks([np.array([3.0]), np.array([0.0, 0.25])])
    assert chained.tolist() == [3.0, 4.0, 4.25]
    assert np.all(np.diff(chained) >= 0)


def test_late_wake_ups_are_their_process_s_stalls_merged_per_process() -> None:
    # wall clock: the run started at 100 s, 0.5 s of warm-up; results read 1 ms after the agent woke (back_ms)
    wakes = calibrate.Wakes(
        wake_ms=np.array([0.3, 20.3, 15.3, 0.3, 1.9, 3.3, 0.3, 0.3, 0.3]),  # the usual wake-up (the median): 0.3 ms
        proc=np.array([0, 0, 0, 1, 1, 1, 1, 1, 0]),
        reply_t=np.array([101.0, 101.021, 101.026, 101.5, 102.0, 102.601, 103.0, 103.5, 104.0]),
    )
    got = calibrate.stall_intervals(wakes, 100.0, 0.5, 1.0, 2)
    # proc 0: woke 20 ms late at 0.52 -> [0.50, 0.52); 15 ms late at 0.525 -> [0.51, 0.525): one stall [0.50, 0.525)
    assert [tuple(round(x, 6) for x in iv) for iv in got[0]] == [(0.5, 0.525)]
    # proc 1: 1.9 ms is within two ticks (the timer); 3.3 ms late at 2.1 -> [2.097, 2.1)
    assert [tuple(round(x, 6) for x in iv) for iv in got[1]] == [(2.097, 2.1)]
    assert calibrate.chain_offsets([np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.5])]) == [0.0, 3.0]


def test_the_same_column_can_take_the_agents_stalls_as_a_track_on_the_way_in_s_clock(tmp_path: Path) -> None:
    # task 21 (bench-1, the second process) woke 15 ms late: with --stalls, a stall of that process ending when it woke,
    # and its wake-up out of the per-task draws; without, that wake-up drawn per task as before
    path, cfg = _seeded_run(tmp_path, wake=0.25, late={21: 15.0}, requester="run-gen0")
    intended = 0.1 * np.arange(40)
    np.savez(tmp_path / "run-gen0.npz", intended=intended, sent=intended, done=intended + 0.06, outcome=np.zeros(40, dtype=np.int16))
    (tmp_path / "run-gen0.npz.json").write_text(json.dumps({"start_wall": T0}))
    runs = [stack.costs_from_trace(trace.parse(path.read_bytes()), skip_s=0.5)]
    lv = {"tags": ["run"], "seeds": [(1, 7)], "costs": runs[0], "client_ms": np.full(35, 0.5), "block_costs": runs, "block_client": [np.full(35, 0.5)]}
    plain = calibrate.same_calibration(lv, cfg, tmp_path, 0.07)  # type: ignore[arg-type]
    assert plain.levels[0].intake_ms and not plain.levels[0].stall_s and max(plain.levels[0].wake_ms) == pytest.approx(15.25)
    cal = calibrate.same_calibration(lv, cfg, tmp_path, 0.07, stall_track=True)  # type: ignore[arg-type]
    level = cal.levels[0]
    assert level.stall_s[0] == [] and len(level.stall_s[1]) == 1
    # woke at the result (2.1 + 0.05 s) less half the idle round trip (0.05 s less the handler), 15 ms beyond the usual 0.25
    (start, end), back = level.stall_s[1][0], 0.5 * float(np.median(runs[0].idle_ms)) / 1000.0
    assert end == pytest.approx(2.15 - 0.5 - back, abs=1e-6) and end - start == pytest.approx(0.015, abs=1e-6)
    assert max(level.wake_ms) == pytest.approx(0.25) and len(level.wake_ms) == len(plain.levels[0].wake_ms) - 1


def test_the_simulator_spreads_agents_over_processes_as_the_live_fleet_does() -> None:
    # the engine's default process per agent (a calibration's stalls without the run's names) and the live fleet's;
    # processes capped at the agents, as the grid and the probe start them
    for agents, procs in ((2, 2), (3, 2), (8, 2), (7, 3), (1, 1), (16, 2), (5, 4)):
        live_procs = [p for _, _, p in calibrate._fleet(agents, procs)]
        assert stack.agent_processes(agents, procs) == live_procs, (agents, procs)
    assert calibrate.fleet_procs(3, 2) == {"bench-0": 0, "bench-1-0": 1, "bench-1-1": 1}
