"""aicp.lab.plots on small real simulator runs and a synthetic bench summary: every PNG written, axes labelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from aicp import cli
from aicp.lab import plots
from aicp.lab import runs as aicp_results
from aicp.sim import results as sim_results
from aicp.sim import scenario as scenario_mod
from aicp.sim.runner import run_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STRATEGIES = ["round_robin", "least_loaded"]


def small(name: str, **overrides: Any) -> scenario_mod.Scenario:
    """A shipped scenario cut down to a few seconds and a few hundred tasks."""
    base = {"duration_s": 8.0, "warmup_s": 1.0, "agents.0.count": 10, "workload.0.arrival.rate_per_s": 150.0}
    return scenario_mod.load(SCENARIOS / f"{name}.toml", {**base, **overrides})


def simulate(root: Path, s: scenario_mod.Scenario, keep_records: bool = True, label: str = "compare") -> sim_results.Run:
    payload = run_scenario(s, STRATEGIES, 2, s.seed, root, jobs=1, progress=False, keep_records=keep_records, label=label)
    return sim_results.load_run(payload["run_dir"])


def bench_summary(run_id: str = "20260101T000000-1", sweep: bool = True) -> dict[str, Any]:
    def trial(mode: str, rate: float | None, thr: float, p50: float, p99: float) -> dict[str, Any]:
        return {
            "mode": mode,
            "offered_rate_per_s": rate,
            "concurrency": 64 if mode == "closed" else None,
            "throughput_per_s": thr,
            "latency_ms": {"p50": p50, "p90": p99 * 0.8, "p99": p99, "p999": p99 * 1.2, "max": p99 * 1.5, "mean": p50},
            "completed": 100,
            "errors": {},
            "lost": 0,
        }

    summary: dict[str, Any] = {
        "run_id": run_id,
        "config": {"agents": 4, "service_time": "constant:0", "verify": "every-hop"},
        "router": trial("closed", None, 2200.0, 20.0, 40.0),
        "relay": trial("closed", None, 2000.0, 22.0, 45.0),
        "relay_ratio": 1.1,
    }
    if sweep:  # deliberately out of order: bench_curve sorts by offered rate
        summary["router_sweep"] = [
            trial("open", 2000.0, 1900.0, 12.0, 44.0),
            trial("open", 250.0, 249.0, 1.5, 7.0),
            trial("open", 1000.0, 990.0, 3.0, 11.0),
        ]
        summary["relay_sweep"] = [trial("open", 250.0, 248.0, 2.0, 10.0), trial("open", 1000.0, 985.0, 4.0, 12.0)]
    summary.update({k: summary["router"][k] for k in ("throughput_per_s", "latency_ms", "completed", "errors", "lost")})
    return summary


def write_bench(root: Path, summary: dict[str, Any]) -> Path:
    folder = root / "bench" / summary["run_id"]
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, f"{path}: {len(data)} bytes is too small for a drawn figure"


def assert_labelled(fig: Figure) -> None:
    drawn = [ax for ax in fig.axes if ax.has_data()]
    assert drawn, "no axis has data"
    for ax in fig.axes:
        assert ax.get_ylabel().strip(), f"axis {ax} has no y label"
    assert any(ax.get_xlabel().strip() for ax in fig.axes)


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory: pytest.TempPathFactory) -> sim_results.Run:
    s = small("crash_storm", **{"faults.0.at_s": 3.0, "faults.0.until_s": 5.0, "faults.0.agents": 3})
    return simulate(tmp_path_factory.mktemp("results"), s)


def test_latency_figure_has_a_ccdf_per_strategy_and_the_tail_with_cis(crash_run: sim_results.Run, tmp_path: Path) -> None:
    fig = plots.latency_figure(crash_run)
    assert_labelled(fig)
    ccdf, tail = fig.axes
    assert [line.get_label() for line in ccdf.get_lines()] == STRATEGIES
    assert ccdf.get_xscale() == "log" and ccdf.get_yscale() == "log"
    for line in ccdf.get_lines():  # P(latency > x) falls from 1 to 1/n as x grows
        x, p = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        order = np.argsort(x, kind="stable")
        assert np.all(np.diff(p[order]) <= 0)
        assert p.max() == pytest.approx(1.0) and 0 < p.min() < 0.01
    assert [t.get_text() for t in tail.get_xticklabels()] == STRATEGIES
    assert {t.get_text() for t in tail.get_legend().get_texts()} == {"p50", "p99", "p99.9"}
    assert_png(plots.save(fig, tmp_path / "deep" / "latency.png"))


def test_latency_figure_without_records_says_so(tmp_path: Path) -> None:
    run = simulate(tmp_path, small("baseline", duration_s=3.0), keep_records=False)
    fig = plots.latency_figure(run)
    assert not fig.axes[0].get_lines()
    assert "no per-task records" in fig.axes[0].texts[0].get_text()
    assert_png(plots.save(fig, tmp_path / "no-records.png"))


def test_ccdf_points_reach_the_single_worst_task() -> None:
    lat = np.arange(1.0, 1001.0)
    x, p = plots.ccdf_points(lat)
    assert p[0] == pytest.approx(1e-3) and x[0] == pytest.approx(1000.0, rel=1e-3)
    assert p[-1] == pytest.approx(1.0) and x[-1] == pytest.approx(1.0)
    assert plots.ccdf_points(np.empty(0))[0].size == 0


def test_timeline_figure_marks_each_fault_on_every_panel(crash_run: sim_results.Run, tmp_path: Path) -> None:
    fig = plots.timeline_figure(crash_run)
    assert_labelled(fig)
    assert fig.axes[-1].get_xlabel() == "simulated time (s)"
    for ax in fig.axes:
        faults = sorted(line.get_xdata()[0] for line in ax.get_lines() if str(line.get_gid()).startswith("fault-"))
        assert faults == [3.0, 5.0]
    strategy_lines = [line for line in fig.axes[0].get_lines() if not str(line.get_gid()).startswith("fault-")]
    assert [line.get_label() for line in strategy_lines] == STRATEGIES
    # the agents-alive panel really shows the three crashed agents missing between the fault lines
    up = fig.axes[2].get_lines()[0]
    t, alive = np.asarray(up.get_xdata()), np.asarray(up.get_ydata())
    assert alive[(t > 3.5) & (t < 4.5)].max() == 7 and alive[t > 6].min() == 10
    assert_png(plots.save(fig, tmp_path / "timeline.png"))


def test_sweep_figure_plots_p99_against_offered_load(tmp_path: Path) -> None:
    rc = cli.main(
        [
            "sweep",
            str(SCENARIOS / "baseline.toml"),
            "--out",
            str(tmp_path),
            "--quiet",
            "--replications",
            "2",
            "--jobs",
            "1",
            "--set",
            "workload.0.arrival.rate_per_s=100,200",
            "--set",
            "agents.0.count=10",
            "--set",
            "duration_s=3",
            "--set",
            "warmup_s=0.5",
            *(a for s in STRATEGIES for a in ("--strategy", s)),
        ]
    )
    assert rc == 0
    summary = sim_results.load_summary(sim_results.latest(tmp_path, "baseline", kind="sweep"))
    fig = plots.sweep_figure(summary)
    assert_labelled(fig)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "offered load (tasks/s)"
    assert sorted(c.get_label() for c in ax.containers) == sorted(STRATEGIES)
    for container in ax.containers:
        assert list(container.lines[0].get_xdata()) == [100, 200]
    assert_png(plots.save(fig, tmp_path / "sweep.png"))


def test_bench_figure_marks_the_design_targets_and_the_relay(tmp_path: Path) -> None:
    fig = plots.bench_figure(bench_summary())
    assert_labelled(fig)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "design target: p99 < 50 ms" in labels and "design target: ≥ 1000 tasks/s" in labels
    assert any(label.startswith("baseline relay p99") for label in labels)
    assert any(label.startswith("baseline relay closed loop") for label in labels)
    router_p99 = next(line for line in ax.get_lines() if line.get_label().startswith("router p99 (open-loop"))
    assert list(router_p99.get_xdata()) == [249.0, 990.0, 1900.0]  # sorted by offered rate
    assert "110%" in ax.get_title()
    assert not any("past saturation" in label for label in labels)
    assert_png(plots.save(fig, tmp_path / "bench.png"))


def test_bench_figure_without_a_relay_still_draws_the_router() -> None:
    summary = bench_summary()
    for key in ("relay", "relay_sweep", "relay_ratio"):
        summary.pop(key)
    labels = [line.get_label() for line in plots.bench_figure(summary).axes[0].get_lines()]
    assert not any("relay" in label for label in labels)
    assert any(label.startswith("router p99") for label in labels)


def test_write_all_without_data_and_without_generating_writes_nothing(tmp_path: Path) -> None:
    written, problems = plots.write_all(tmp_path, generate=False, say=lambda _: None)
    assert written == []
    assert len(problems) == 8  # 2 strategy, 1 sweep, 2 failure, 1 bench, 2 record-replay figures
    assert all("no data, and generating it is off" in p for p in problems)
    assert not (tmp_path / "plots").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing was run


def test_aicp_plots_uses_existing_results_and_prints_each_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("crash_storm", "flapping"):
        simulate(tmp_path, small(name, **{"faults.0.agents": 2}))
    write_bench(tmp_path, bench_summary("20260101T000000-1"))
    write_bench(tmp_path, bench_summary("20260101T000001-2", sweep=False))  # newer, but has no curve
    before = sorted(p for p in tmp_path.rglob("*") if p.is_dir())
    rc = cli.main(["plots", "--results", str(tmp_path), "--no-generate", "--only", "failure", "--only", "bench"])
    out = capsys.readouterr().out
    assert rc == 0
    names = ["failure_timeline_crash_storm.png", "failure_timeline_flapping.png", "bench_latency_throughput.png"]
    for name in names:
        path = aicp_results.plots_dir(tmp_path) / name
        assert_png(path)
        assert f"wrote {path}" in out
    after = sorted(p for p in tmp_path.rglob("*") if p.is_dir() and p.name != "plots")
    assert after == before


def test_plot_path_names_every_group() -> None:
    assert plots.plot_path("strategy", "baseline", "/r") == Path("/r/plots/strategy_latency_baseline.png")
    assert plots.plot_path("bench", root="/r") == Path("/r/plots/bench_latency_throughput.png")
    with pytest.raises(ValueError, match="unknown plot group"):
        plots.plot_path("pie")


def test_bench_figure_keeps_levels_past_saturation_off_the_curve() -> None:
    summary = bench_summary()
    summary["router_sweep"].append(
        {"offered_rate_per_s": 4000.0, "throughput_per_s": 1200.0, "latency_ms": {"p50": 1200.0, "p99": 1600.0}, "lost": 0}
    )
    lines = {line.get_label(): line for line in plots.bench_figure(summary).axes[0].get_lines()}
    assert list(lines["router p99 (open-loop sweep)"].get_xdata()) == [249.0, 990.0, 1900.0]
    past = next(line for label, line in lines.items() if label.startswith("router p99 past saturation"))
    assert list(past.get_xdata()) == [1200.0] and list(past.get_ydata()) == [1600.0]
