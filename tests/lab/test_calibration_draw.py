"""aicp.lab.calibration_draw and calibration_noise: the random grid's workloads and the intervals of a run's percentiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aicp.lab import calibrate
from aicp.lab import calibration_draw as cd
from aicp.lab import calibration_noise as cn


def test_draws_stay_in_the_issue_s_box_and_their_rate_keeps_each_slot_as_busy_as_drawn() -> None:
    got = cd.draw(400, seed=5, max_rate=800.0, min_rate=40.0)
    assert len(got.workloads) == 400 and got.tried > 400  # the box's fast corner is beyond 800/s: some drawn again
    for w in got.workloads:
        assert 2 <= w.agents <= 16 and 1 <= w.concurrency <= 4 and 2.0 <= w.mean_ms <= 20.0
        assert 0.5 <= w.utilisation <= 0.85 and 40.0 <= w.rate_per_s <= 800.0
        assert w.rate_per_s == pytest.approx(w.utilisation * w.agents * w.concurrency * 1000.0 / w.mean_ms, abs=0.051)  # rounded to 0.1/s
        assert (w.sigma is None) == (w.dist == "exponential")
        assert w.sigma is None or 0.25 <= w.sigma <= 1.0
    # the draws cover the box, not one corner of it
    assert {w.agents for w in got.workloads} == set(range(2, 17)) and {w.concurrency for w in got.workloads} == {1, 2, 3, 4}
    assert {w.dist for w in got.workloads} == {"exponential", "lognormal"}
    utils = np.array([w.utilisation for w in got.workloads])
    assert utils.min() < 0.53 and utils.max() > 0.82
    assert cd.rate_for(0.75, 4, 1, 6.0) == pytest.approx(500.0)  # the issue's workload: 4 agents x 1 slot, 6 ms, 75% busy


def test_a_draw_is_reproducible_from_its_seed_and_each_workload_keeps_its_name_whatever_n() -> None:
    a, b, c = cd.draw(6, seed=11), cd.draw(6, seed=11), cd.draw(6, seed=12)
    assert a == b and a.workloads != c.workloads
    assert cd.draw(3, seed=11).workloads == a.workloads[:3]  # the first k of a longer draw
    assert len({w.name for w in a.workloads}) == 6
    with pytest.raises(ValueError, match="no workload"):
        cd.draw(1, seed=1, max_rate=1.0, min_rate=0.5, max_tries=1000)


def test_a_drawn_workload_written_as_a_file_runs_live_and_simulated_as_drawn(tmp_path: Path) -> None:
    from aicp.sim import scenario as sc_mod

    got = cd.draw(8, seed=3)
    paths = cd.write(got, tmp_path / "w", draw_seed=3)
    assert [p.stem for p in paths] == [w.name for w in got.workloads]
    args = calibrate.bench_args(agent_procs=2, live_duration=10.0, live_samples=4000, live_warmup=2.0, seed=1)
    for w, path in zip(got.workloads, paths, strict=True):
        sc = sc_mod.load(path)
        group = sc.agents[0]
        assert (sc.name, group.count, group.concurrency, sc.strategies) == (w.name, w.agents, w.concurrency, ["least_loaded", "round_robin"])
        assert group.service_time.mean_ms == w.mean_ms  # type: ignore[union-attr]
        assert sc.workload[0].arrival.rate_per_s == w.rate_per_s  # type: ignore[union-attr]
        cfg = calibrate.live_args_for(sc, path, "round_robin", args)
        assert cfg.service_time == f"{w.dist}:{w.mean_ms:g}" and cfg.agent_sigma == w.sigma and cfg.rate == w.rate_per_s
        assert calibrate.what(sc) == w.describe()


def test_the_window_bootstrap_resamples_whole_windows_as_a_direct_resampling_does() -> None:
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0.0, 12.0, 1500))
    v = rng.exponential(10.0, t.size) * (1.0 + (np.floor(t) == 5))  # second 5 is a burst: its tasks slow together
    got = cn.window_bootstrap(t, v, 1.0, resamples=500, seed=2)
    idx = np.floor(t).astype(int)
    by_window = [v[idx == j] for j in range(12)]
    direct = np.array([np.percentile(np.concatenate([by_window[j] for j in rng.integers(0, 12, 12)]), [50, 99]) for _ in range(500)])
    want = np.percentile(direct, [2.5, 97.5], axis=0)
    for i, q in enumerate((50.0, 99.0)):
        assert got[q][0] == pytest.approx(want[0, i], rel=0.08) and got[q][1] == pytest.approx(want[1, i], rel=0.08)
        assert got[q][0] < np.percentile(v, q) < got[q][1]
    # tasks resampled (nearly) alone would take the burst for independent luck: a narrower interval than whole windows give
    alone = cn.window_bootstrap(t, v, 0.05, resamples=500, seed=2)[99.0]
    assert alone[1] - alone[0] < 0.7 * (got[99.0][1] - got[99.0][0])
    assert all(np.isnan(x) for x in cn.window_bootstrap(t[:10], v[:10], 100.0)[99.0])  # one window: no interval


def test_runs_joined_never_share_a_window() -> None:
    a = (np.array([2.0, 2.5, 9.9]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([2.1, 4.0]), np.array([4.0, 5.0]))
    t, v = cn.join_runs([a, b], 1.0)
    assert v.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert t[:3].tolist() == [0.0, 0.5, pytest.approx(7.9)] and t[3] == pytest.approx(9.0) and t[4] == pytest.approx(10.9)


def test_a_run_s_length_follows_the_spread_it_must_reach_within_bounds_and_the_budget() -> None:
    assert cn.duration_for(0.12, 10.0, 0.06, 10.0, 60.0) == pytest.approx(40.0)  # twice the target: four times as long
    assert cn.duration_for(0.03, 10.0, 0.06, 10.0, 60.0) == 10.0 and cn.duration_for(0.3, 10.0, 0.06, 10.0, 60.0) == 60.0
    assert cn.duration_for(float("nan"), 10.0, 0.06, 10.0, 60.0) == 10.0
    assert cn.allocate([10.0, 20.0, 40.0], 100.0, 10.0) == [10.0, 20.0, 40.0]
    got = cn.allocate([10.0, 40.0, 40.0, 25.0], 80.0, 10.0)  # the longest cut to one length, the quiet one kept
    assert got[0] == 10.0 and sum(got) == pytest.approx(80.0) and got[1] == pytest.approx(got[2]) == pytest.approx(got[3])
    assert cn.allocate([30.0, 30.0], 10.0, 10.0) == [10.0, 10.0]  # never under the least
    assert cn.relative_spread(np.array([9.0, 11.0])) == pytest.approx(np.std([9.0, 11.0], ddof=1) / 10.0)


def test_a_miss_the_intervals_leave_undecided_is_told_from_one_beyond_them() -> None:
    assert cn.verdict(110.0, 100.0, (80.0, 120.0)) == "ok"
    assert cn.verdict(70.0, 100.0, (80.0, 130.0)) == "noise"  # 70 is within 15% of 80, which the live interval holds
    assert cn.verdict(60.0, 100.0, (80.0, 130.0)) == "MISS"
    assert cn.verdict(60.0, 100.0, (80.0, 130.0), (55.0, 70.0)) == "noise"  # the prediction's own interval reaches 68 = 0.85 x 80
    assert cn.verdict(60.0, 100.0, (float("nan"), float("nan"))) == "MISS" and cn.verdict(float("nan"), 100.0, (1.0, 2.0)) == "n/a"


def test_a_live_interval_is_widened_to_the_simulator_s_spread_where_the_bootstrap_is_narrower() -> None:
    assert cn.widen((90.0, 110.0), 100.0, 0.1) == pytest.approx((80.4, 119.6))
    assert cn.widen((70.0, 140.0), 100.0, 0.1) == (70.0, 140.0)
    assert cn.widen((90.0, 110.0), 100.0, float("nan")) == (90.0, 110.0)
    assert cn.widen((float("nan"), float("nan")), 100.0, 0.05) == pytest.approx((90.2, 109.8))


def test_the_random_grid_writes_its_workloads_into_the_run_folder_and_plans_their_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from aicp.sim import scenario as sc_mod

    parser = argparse.ArgumentParser()
    calibrate.add_arguments(parser)
    args = parser.parse_args(["--grid-random", "2", "--seed", "9", "--spread-seeds", "3", "--live-max", "30", "--live-budget", "12"])
    files, drawn = calibrate.random_grid_files(args, tmp_path)
    assert [f.parent for f in files] == [tmp_path / "workloads"] * 2 and list(drawn) == [w.name for w in cd.draw(2, 9).workloads]
    out = capsys.readouterr().out
    assert all(desc in out for desc in drawn.values())
    scenarios = [(f, sc_mod.load(f)) for f in files]
    # shortened so that the test stays quick: the plan runs the simulator 3 x 10 s per strategy and workload
    for i, (f, sc) in enumerate(scenarios):
        scenarios[i] = (f, sc_mod.from_data({**sc_mod.to_data(sc), "workload": [{"method": "bench.synthetic", "arrival": {"process": "poisson", "rate_per_s": 50.0}}]}, sc.name))
    spreads, plan = calibrate.plan_durations(scenarios, None, args, 30)
    assert set(plan) == set(drawn) and all(10.0 <= d <= 30.0 for d in plan.values()) and sum(plan.values()) <= 24.0 + 1e-6
    assert all(set(v) == {"least_loaded", "round_robin"} and all(x["p99"] > 0 for x in v.values()) for v in spreads.values())
    args.target_spread = 0.0
    assert calibrate.plan_durations(scenarios, None, args, 30) == ({}, {})
