"""aicp.lab.runs (bench loading, fault times) and aicp.lab.datagen's commands, on synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from aicp.lab import datagen
from aicp.lab import runs as aicp_results


def write(root: Path, run_id: str, summary: dict[str, Any] | str) -> Path:
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return folder


def trial(rate: float, thr: float, p99: float | None) -> dict[str, Any]:
    return {
        "mode": "open",
        "offered_rate_per_s": rate,
        "throughput_per_s": thr,
        "lost": 0,
        "errors": {"timeout": 2},
        "latency_ms": {"p50": 1.0, "p99": p99},
    }


def test_load_bench_reads_the_summary_and_refuses_other_folders(tmp_path: Path) -> None:
    folder = write(tmp_path, "20260101T000000-1", {"run_id": "20260101T000000-1", "router": {}})
    run = aicp_results.load_bench(folder)
    assert run.folder == folder and run.run_id == "20260101T000000-1" and not run.has_sweep
    with pytest.raises(FileNotFoundError, match=r"no summary\.json"):
        aicp_results.load_bench(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="JSON object"):
        aicp_results.load_bench(write(tmp_path, "list", "[1, 2]"))


def test_latest_bench_picks_the_newest_run_that_has_what_is_asked(tmp_path: Path) -> None:
    write(tmp_path, "20260101T000000-1", {"router": {}, "router_sweep": [trial(100, 100, 2.0)]})
    write(tmp_path, "20260101T000100-2", {"router": {}})  # newer, no sweep
    write(tmp_path, "20260101T000200-3", {"error": "RuntimeError: nothing listens"})  # newest, failed before measuring
    write(tmp_path, "20260101T000300-4", "{not json")  # half written
    (tmp_path / "core-20260101T000400.json").write_text("{}")  # bench-core output lives beside the run folders
    assert aicp_results.latest_bench(tmp_path).folder.name == "20260101T000100-2"
    assert aicp_results.latest_bench(tmp_path, need_sweep=True).folder.name == "20260101T000000-1"
    with pytest.raises(FileNotFoundError, match="--sweep"):
        aicp_results.latest_bench(tmp_path / "20260101T000100-2", need_sweep=True)
    assert aicp_results.bench_runs(tmp_path / "missing") == []


def test_bench_curve_sorts_by_offered_rate_and_keeps_missing_values_as_nan() -> None:
    summary = {"router_sweep": [trial(1000, 990, 11.0), trial(250, 249, None), trial(500, 498, 6.0)]}
    curve = aicp_results.bench_curve(summary)
    assert curve["offered_per_s"].tolist() == [250, 500, 1000]
    assert curve["throughput_per_s"].tolist() == [249, 498, 990]
    assert math.isnan(curve["p99_ms"][0]) and curve["p99_ms"][1:].tolist() == [6.0, 11.0]
    assert math.isnan(curve["p999_ms"][2])
    assert curve["errors"].tolist() == [2, 2, 2]
    empty = aicp_results.bench_curve(summary, "relay")
    assert set(empty) == set(curve) and all(v.size == 0 for v in empty.values())


def test_results_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(aicp_results.RESULTS_ENV, str(tmp_path))
    assert aicp_results.results_dir() == tmp_path
    assert aicp_results.plots_dir() == tmp_path / "plots"
    monkeypatch.delenv(aicp_results.RESULTS_ENV)
    assert aicp_results.results_dir() == aicp_results.REPO_ROOT / "results"


def times(events: list[aicp_results.FaultEvent]) -> list[tuple[float, str]]:
    return [(e.t_s, e.kind) for e in events]


def test_fault_events_of_a_crash_with_recovery_and_of_named_agents() -> None:
    scenario = {
        "duration_s": 60.0,
        "faults": [
            {"action": "crash", "at_s": 20.0, "agents": 10, "until_s": 40.0},
            {"action": "slow", "at_s": 5.0, "agents": ["a-1"], "until_s": None},
        ],
    }
    events = aicp_results.fault_events(scenario)
    assert times(events) == [(5.0, "down"), (20.0, "down"), (40.0, "up")]
    assert events[0].agents == "a-1" and events[1].agents == "10 agents"


def test_fault_events_expand_flaps_like_the_simulator() -> None:
    flap = {"duration_s": 60.0, "faults": [{"action": "flap", "at_s": 10.0, "agents": 5, "period_s": 4.0, "until_s": 50.0}]}
    events = aicp_results.fault_events(flap)
    assert times(events) == [(10.0 + 2 * k, "down" if k % 2 == 0 else "up") for k in range(20)]
    # cut in the middle of a down spell: sim.faults brings the agents back at until_s
    cut = {"duration_s": 60.0, "faults": [{"action": "flap", "at_s": 0.0, "agents": 1, "period_s": 4.0, "until_s": 3.0}]}
    assert times(aicp_results.fault_events(cut)) == [(0.0, "down"), (2.0, "up")]
    cut["faults"][0]["until_s"] = 1.0
    assert times(aicp_results.fault_events(cut)) == [(0.0, "down"), (1.0, "up")]
    # no until_s: flaps to the end of the run, and nothing after it
    endless = {"duration_s": 7.0, "faults": [{"action": "flap", "at_s": 0.0, "agents": 1, "period_s": 4.0}]}
    assert times(aicp_results.fault_events(endless)) == [(0.0, "down"), (2.0, "up"), (4.0, "down"), (6.0, "up")]


def test_fault_events_match_the_simulated_agents_alive() -> None:
    import numpy as np

    from aicp.sim import scenario as scenario_mod
    from aicp.sim.engine import Simulation

    s = scenario_mod.load(
        aicp_results.scenarios_dir() / "flapping.toml",
        {
            "duration_s": 20.0,
            "warmup_s": 1.0,
            "workload.0.arrival.rate_per_s": 50.0,
            "faults.0.at_s": 3.0,
            "faults.0.until_s": 15.0,
        },
    )
    result = Simulation(s, "round_robin", np.random.SeedSequence(1)).run()
    t, up = result.timelines["sample_t_s"], result.timelines["agents_up"]
    events = aicp_results.fault_events(scenario_mod.to_data(s))
    for ev in events:
        after = up[(t > ev.t_s) & (t <= ev.t_s + 1.0)]  # a sample inside the 2 s spell that starts at ev
        assert after.size and after.max() == (35 if ev.kind == "down" else 40), ev


def test_commands_shown_to_users_are_relative_and_complete(tmp_path: Path) -> None:
    argv = datagen.compare_argv("baseline", tmp_path, fast=True)
    line = datagen.command_line(argv)
    assert line.startswith("aicp compare scenarios/baseline.toml ")
    assert "--strategy round_robin" in line and "--replications 2" in line
    assert "--strategy" not in datagen.command_line(datagen.compare_argv("baseline", tmp_path, fast=False))
    # failure replays keep their length, so the faults at 20-50 s still happen
    assert "duration_s" not in " ".join(datagen.compare_argv("crash_storm", tmp_path, fast=True))
    assert datagen.bench_argv(tmp_path, fast=True)[:3] == ["bench", "--sweep", "--baseline"]


def test_ensure_without_generating_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"aicp sweep scenarios/baseline\.toml"):
        datagen.ensure_sweep(tmp_path, fast=True, generate=False)
    with pytest.raises(FileNotFoundError, match="aicp bench --sweep"):
        datagen.ensure_bench(tmp_path, generate=False)
    with pytest.raises(FileNotFoundError, match=r"aicp compare scenarios/flapping\.toml"):
        datagen.ensure_compare("flapping", tmp_path, generate=False)


def test_fast_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, fast in (("1", True), ("yes", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(datagen.FAST_ENV, value)
        assert datagen.fast_mode() is fast
