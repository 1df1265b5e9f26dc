"""``aicp sim``, ``compare`` and ``sweep``: outputs, --json shape, run folders (also when a run fails)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sim_helpers import SCENARIOS

from aicp.cli import main
from aicp.sim import results
from aicp.sim.engine import Simulation

SMALL = ["--set", "duration_s=4", "--set", "warmup_s=1", "--set", "workload.0.arrival.rate_per_s=200", "--quiet"]


def test_sim_writes_run_folder_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, js = tmp_path / "res", tmp_path / "r.json"
    rc = main(["sim", str(SCENARIOS / "baseline.toml"), "--strategy", "power_of_two", "--strategy", "random",
               "--replications", "2", "--jobs", "1", "--out", str(out), "--json", str(js), *SMALL])  # fmt: skip
    assert rc == 0
    doc = json.loads(js.read_text())
    for name in ("power_of_two", "random"):
        r = doc["results"][name]
        for key in ("mean", "p50", "p99"):
            assert r["latency_ms"][key] > 0
        assert r["latency_ms_ci95"]["mean"] >= 0
        assert r["completed"] > 0 and r["failed"] == 0 and r["lost"] == 0 and r["throughput_per_s"] > 0
    folder = Path(doc["run_dir"])
    assert folder.parent == out / "baseline"
    for name in ("scenario.json", "seeds.json", "meta.json", "summary.json"):
        assert (folder / name).is_file()
    run = results.load_run(folder)
    assert run.scenario["duration_s"] == 4 and run.scenario["router"]["lease_s"] == 90.0  # resolved, overrides applied
    assert run.meta["version"] and run.seeds["root_seed"] == 7
    assert run.labels == ["power_of_two-r0", "power_of_two-r1", "random-r0", "random-r1"]
    rec = run.records("random-r1")
    assert rec["arrival"].size == rec["outcome"].size > 500
    assert run.timelines("random-r1")["throughput"].sum() == (rec["outcome"] == 1).sum()
    assert len(run.rows()) == 4
    assert "power_of_two" in capsys.readouterr().out


def test_compare_prints_one_table_of_all_strategies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "c.json"
    rc = main(["compare", str(SCENARIOS / "baseline.toml"), "--replications", "2", "--jobs", "2", "--no-records",
               "--out", str(tmp_path), "--json", str(js), *SMALL])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    for header in ("mean ms", "p50 ms", "p99 ms", "p99.9 ms", "throughput/s", "failed", "retries", "lost"):
        assert header in text
    doc = json.loads(js.read_text())
    assert set(doc["results"]) == {"round_robin", "random", "least_loaded", "power_of_two", "trust_weighted", "latency_ewma"}
    for name in doc["results"]:
        assert f"{name} " in text
    assert not (Path(doc["run_dir"]) / "records").exists()


def test_sweep_runs_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "s.json"
    rc = main(["sweep", str(SCENARIOS / "mm1.toml"), "--set", "workload.0.arrival.rate_per_s=300,600", "--set", "duration_s=3",
               "--set", "warmup_s=0.5", "--replications", "2", "--jobs", "2", "--out", str(tmp_path), "--json", str(js),
               "--csv", str(tmp_path / "s.csv"), "--quiet"])  # fmt: skip
    assert rc == 0
    doc = json.loads(js.read_text())
    rows = {row["workload.0.arrival.rate_per_s"]: row for row in doc["rows"]}
    assert set(rows) == {300, 600}
    # M/M/1 with a 1 ms service: 1/(1000-300) = 1.43 ms and 1/(1000-600) = 2.5 ms
    assert rows[300]["latency_mean_ms"] < rows[600]["latency_mean_ms"]
    assert (Path(doc["run_dir"]) / "point-1" / "scenario.json").is_file()
    assert (tmp_path / "s.csv").read_text().count("\n") == 3


def test_a_failing_run_still_writes_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_sampler(self: Simulation):  # type: ignore[no-untyped-def]
        yield self.env.timeout(2.0)
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(Simulation, "_sampler", broken_sampler)
    js = tmp_path / "f.json"
    rc = main(["sim", str(SCENARIOS / "baseline.toml"), "--strategy", "random", "--replications", "1", "--jobs", "1",
               "--out", str(tmp_path), "--json", str(js), *SMALL])  # fmt: skip
    assert rc == 1
    doc = json.loads(js.read_text())
    assert "sampler exploded" in doc["error"]
    folder = Path(doc["run_dir"])
    summary = results.load_summary(folder)
    assert "sampler exploded" in summary["runs"][0]["error"]
    rec = results.load_npz(folder / "records" / "random-r0.npz")
    assert 0 < rec["arrival"].size and np.nanmax(rec["arrival"]) < 2.01  # what it had when it failed
    assert (folder / "scenario.json").is_file()


def test_scenario_typo_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text((SCENARIOS / "mm1.toml").read_text().replace("warmup_s", "warmpu_s"))
    assert main(["sim", str(bad), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "warmpu_s" in err and str(bad) in err
    assert main(["sim", str(SCENARIOS / "mm1.toml"), "--strategy", "nope", "--out", str(tmp_path)]) == 2


def test_bench_sim_small(capsys: pytest.CaptureFixture[str]) -> None:
    from aicp.lab.bench import sim as bench

    s = bench.mm100_scenario(3000)
    assert s.agents[0].concurrency == 100
    figures = bench._case(
        "mm100", {"mm_tasks": 3000, "seed": 1, "scenarios": str(SCENARIOS), "strategy": "round_robin", "scale_tasks": 0}
    )
    assert figures["tasks"] == 3000 and figures["ciw"]["tasks"] == 3000 and figures["ratio"] > 0 and figures["lost"] == 0


def test_bench_sim_jsq_against_bare_simpy() -> None:
    from aicp.lab.bench import sim as bench
    from aicp.lab.bench import simpy_jsq

    s = bench.jsq100_scenario(3000)
    assert s.agents[0].count == 100 and s.agents[0].concurrency == 1 and s.strategies == ["least_loaded"]
    figures = bench._case(
        "jsq100",
        {"mm_tasks": 3000, "seed": 1, "scenarios": str(SCENARIOS), "strategy": "round_robin", "scale_tasks": 0, "repeat": 2},
    )
    assert figures["tasks"] == 3000 and figures["simpy"]["tasks"] == 3000 and figures["lost"] == 0
    assert len(figures["ratios"]) == 2 and min(figures["ratios"]) <= figures["ratio"] <= max(figures["ratios"])
    # the same queue: both means near JSQ's ~105 ms at rho 0.9 (light load would give ~100 ms, no queue)
    assert 95.0 < figures["simpy"]["mean_ms"] < 130.0 and 95.0 < figures["mean_ms"] < 130.0, figures
    # the bare model really joins the shortest queue: at rho 0.99 it stays near the service time,
    # where random assignment (M/M/1 per server) would average 100 / (1 - 0.99) = 10 s
    heavy = simpy_jsq.run(20000, servers=100, rate_per_s=990.0, mean_service_s=0.1, seed=3)
    assert heavy.mean_s < 0.5, heavy
