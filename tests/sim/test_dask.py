"""Runs on a real Dask LocalCluster (127.0.0.1): the same bytes as local processes,
a worker killed mid-sweep, a run that raises, Ctrl-C. Every cluster is closed in
``finally`` and its worker processes are checked gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from distributed import Client
from sim_helpers import SCENARIOS, load

from aicp.cli import main
from aicp.sim.dask_runs import connect, parse_address, remote_run, scenario_files
from aicp.sim.runner import RunLog, RunSpec, run_many, run_one, run_scenario, without_wall

pytestmark = [pytest.mark.live, pytest.mark.slow]  # real worker processes and a scheduler on 127.0.0.1

ROOT = Path(__file__).resolve().parents[2]
GRID = ["--set", "workload.0.arrival.rate_per_s=150,250", "--set", "duration_s=4", "--set", "warmup_s=1"]


def _worker_processes(before: set[int]) -> list[psutil.Process]:
    """Children of this process started since ``before``, less multiprocessing's resource
    tracker (started once by the first spawned child; it lives as long as this process)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _assert_gone(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"still running after the cluster closed: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, Client]]:
    """Two single-thread worker processes as ``--dask local:2`` starts them, no dashboard;
    the test's own client watches them."""
    pids: set[int] = set()
    with connect("local:2", dashboard=False) as client:
        try:
            yield str(client.scheduler_info()["address"]), client
        finally:
            pids = set(client.run(os.getpid).values())
    _assert_gone([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)])


def _background(dask_worker: Any) -> tuple[bool, float, float]:
    memory = dask_worker.memory_manager
    return "profile" in dask_worker.periodic_callbacks, dask_worker._tick_interval, memory.memory_monitor_interval


def test_a_local_cluster_s_workers_leave_the_cpu_to_the_runs(cluster: tuple[str, Client]) -> None:
    """No profiler sampling the run's stack, event-loop checks once a second (dask_runs.QUIET)."""
    _, client = cluster
    assert set(client.run(_background).values()) == {(False, 1.0, 1.0)}
    assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler._tick_interval) == 1.0


def test_parse_address() -> None:
    assert parse_address("local") == ("local", None)
    assert parse_address("local:3") == ("local", 3)
    assert parse_address("tcp://10.0.0.5:8786") == ("tcp://10.0.0.5:8786", None)
    for bad in ("local:0", "local:x", "10.0.0.5:8786", "tcp://"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_bad_dask_address_is_refused_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", str(SCENARIOS / "mm1.toml"), *GRID, "--dask", "local:0", "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and "local:0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_sweep_through_dask_gives_the_same_bytes_as_local_processes(tmp_path: Path) -> None:
    common = ["sweep", str(SCENARIOS / "baseline.toml"), *GRID, "--strategy", "random", "--strategy", "power_of_two",
              "--replications", "2", "--quiet"]  # fmt: skip
    assert main([*common, "--jobs", "2", "--out", str(tmp_path / "local")]) == 0
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main([*common, "--dask", "local:2", "--out", str(tmp_path / "dask")]) == 0
    _assert_gone(_worker_processes(before))

    (local,) = (tmp_path / "local" / "baseline").iterdir()
    (dask,) = (tmp_path / "dask" / "baseline").iterdir()
    a, b = (local / "aggregate.json").read_bytes(), (dask / "aggregate.json").read_bytes()
    assert a == b
    doc = json.loads(a)
    assert len(doc["runs"]) == 8 and len(doc["rows"]) == 4 and doc["error"] is None
    means = {(r["point"], r["strategy"]): r["latency_mean_ms"] for r in doc["rows"]}
    assert means[(0, "random")] != means[(0, "power_of_two")] != means[(1, "power_of_two")]  # not trivially equal
    assert not any(k in run for run in doc["runs"] for k in ("wall_s", "tasks_per_wall_s"))
    # the client wrote what the folder keeps; the summary says where the runs went
    for point in ("point-0", "point-1"):
        for kind in ("timelines", "records"):
            assert sorted(p.name for p in (dask / point / kind).iterdir()) == sorted(p.name for p in (local / point / kind).iterdir())
    summary = json.loads((dask / "summary.json").read_text())
    assert summary["executor"]["kind"] == "dask" and summary["executor"]["workers"] == 2 and summary["retried"] == []
    assert json.loads((local / "summary.json").read_text())["executor"] == {"kind": "processes", "jobs": 2}


def _kill_a_busy_worker(client: Client, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker seen running one of the sweep's runs."""
    pids: dict[str, int] = client.run(os.getpid)
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("aicp-run-") for k in keys)]
        if busy and busy[0] in pids:
            time.sleep(0.1)  # into the run
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])
            return
        time.sleep(0.02)


def test_a_worker_killed_mid_sweep_loses_nothing(cluster: tuple[str, Client], tmp_path: Path) -> None:
    address, client = cluster
    s = load("baseline", duration_s=5.0, warmup_s=1.0)
    strategies, reps = ["random", "power_of_two"], 3
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed, stop), daemon=True)
    killer.start()
    try:
        on_dask = run_scenario(s, strategies, reps, s.seed, tmp_path / "dask", progress=False, keep_records=False, dask=address)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no worker was killed"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    # every run exactly once, none failed, and the folder names the runs that went to a worker twice
    assert sorted((r["strategy"], r["replication"]) for r in on_dask["runs"]) == sorted(
        (name, k) for name in strategies for k in range(reps)
    )
    assert on_dask["error"] is None
    summary = json.loads((Path(on_dask["run_dir"]) / "summary.json").read_text())
    assert summary["retried"], "the killed worker's runs are not noted as retried"
    assert all(r["attempts"] >= 2 for r in summary["retried"])
    assert {r["label"] for r in summary["retried"]} <= {f"{n}-r{k}" for n in strategies for k in range(reps)}
    # re-executed runs give the same numbers as an undisturbed local run
    local = run_scenario(s, strategies, reps, s.seed, tmp_path / "local", jobs=2, progress=False, keep_records=False)
    assert (Path(on_dask["run_dir"]) / "aggregate.json").read_bytes() == (Path(local["run_dir"]) / "aggregate.json").read_bytes()


def _allowed_failures(client: Client, n: int | None = None) -> int:
    def swap(dask_scheduler: Any) -> int:
        old: int = dask_scheduler.allowed_failures
        if n is not None:
            dask_scheduler.allowed_failures = n
        return old

    out: int = client.run_on_scheduler(swap)
    return out


def test_a_run_dask_gives_up_on_is_reported_with_its_spec(cluster: tuple[str, Client]) -> None:
    """With no second chance allowed, the killed worker's runs fail (KilledWorker); the others go on."""
    address, client = cluster
    s = load("baseline", duration_s=5.0, warmup_s=1.0)
    specs = [RunSpec(s, "random", k, s.seed) for k in range(4)]
    log = RunLog()
    killed: list[int] = []
    stop = threading.Event()
    old = _allowed_failures(client, 0)
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, killed, stop), daemon=True)
    killer.start()
    try:
        run_many(specs, dask=address, progress=False, log=log)
    finally:
        stop.set()
        killer.join(timeout=10)
        _allowed_failures(client, old)
    assert killed
    outcomes = log.in_order()
    assert [o.replication for o in outcomes] == [0, 1, 2, 3]
    failed = [o.summary for o in outcomes if o.summary.get("error")]
    assert failed and all("KilledWorker" in f["error"] and f["strategy"] == "random" and "point" in f for f in failed)
    assert len(failed) < 4 and all(o.summary["completed"] > 0 for o in outcomes if not o.summary.get("error"))


def test_a_run_that_raises_is_reported_and_the_others_go_on(cluster: tuple[str, Client]) -> None:
    address, _ = cluster
    s = load("mm1", duration_s=2.0, warmup_s=0.5)
    specs = [RunSpec(s, name, 0, s.seed) for name in ("round_robin", "no_such_strategy", "random")]
    on_dask, local = RunLog(), RunLog()
    run_many(specs, dask=address, progress=False, log=on_dask)
    run_many(specs, jobs=2, progress=False, log=local)
    for log in (on_dask, local):
        ok, bad, ok2 = (o.summary for o in log.in_order())
        assert bad["strategy"] == "no_such_strategy" and bad["replication"] == 0 and bad["point"] == 0
        assert "no_such_strategy" in bad["error"] and "Traceback" in bad["error"]
        assert not ok.get("error") and not ok2.get("error") and ok["completed"] > 0 and ok2["completed"] > 0
    encode = msgspec.json.encode
    assert encode([without_wall(o.summary) for o in on_dask.in_order()]) == encode([without_wall(o.summary) for o in local.in_order()])


def test_a_scenario_s_files_travel_with_it(tmp_path: Path) -> None:
    """A worker needs no copy of the trace or sample files: they come with the run."""
    copy = tmp_path / "scenarios"
    (copy / "traces").mkdir(parents=True)
    (copy / "trace_replay.toml").write_bytes((SCENARIOS / "trace_replay.toml").read_bytes())
    for name in ("sample_trace.csv", "service_samples.txt"):
        (copy / "traces" / name).write_bytes((SCENARIOS / "traces" / name).read_bytes())
    s = load("trace_replay")
    from aicp.sim import scenario as scenario_mod

    elsewhere = scenario_mod.load(copy / "trace_replay.toml", {"duration_s": 8.0})
    files = scenario_files(elsewhere)
    assert sorted(Path(p).name for p in files) == ["sample_trace.csv", "service_samples.txt"]
    for name in ("sample_trace.csv", "service_samples.txt"):
        (copy / "traces" / name).unlink()  # gone from the "client's" disk
    outcome, kept = remote_run(RunSpec(elsewhere, "least_loaded", 0, s.seed, out_dir=str(tmp_path / "out")), files=files)
    assert not outcome.summary.get("error") and outcome.summary["completed"] > 0
    assert kept is not None and set(kept) == {"timelines", "records"} and not (tmp_path / "out").exists()
    here = run_one(RunSpec(scenario_mod.with_overrides(s, {"duration_s": 8.0}), "least_loaded", 0, s.seed))
    assert msgspec.json.encode(without_wall(outcome.summary)) == msgspec.json.encode(without_wall(here.summary))


def test_ctrl_c_cancels_and_leaves_a_readable_partial_folder(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "aicp", "sweep", str(SCENARIOS / "baseline.toml"), *GRID, "--set", "duration_s=6",
           "--strategy", "random", "--strategy", "power_of_two", "--replications", "6", "--no-records",
           "--dask", "local:2", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if any(tmp_path.glob("baseline/*/point-*/timelines/*.npz")):  # runs are coming back
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    _assert_gone(children)
    (folder,) = (tmp_path / "baseline").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["error"].startswith("KeyboardInterrupt")
    assert 0 < len(summary["runs"]) < 24
    assert all(not r.get("error") for r in summary["runs"])
    assert f"partial results in {folder}" in err.decode()
    aggregate = json.loads((folder / "aggregate.json").read_text())
    assert len(aggregate["runs"]) == len(summary["runs"])


def test_bench_sim_dask_compares_both_modes_on_the_same_runs(cluster: tuple[str, Client]) -> None:
    from aicp.lab.bench import dask_overhead
    from aicp.lab.bench.sim import mm100_scenario

    address, _ = cluster
    s = mm100_scenario(200)
    f = dask_overhead._compare("short", lambda folder: dask_overhead._batch(s, 6, 1, folder), 2, address, rounds=2)
    assert f["rounds"] == 2 and len(f["pool_walls_s"]) == len(f["dask_walls_s"]) == 2
    assert f["runs"] == 6 and f["tasks_per_run"] == 200 and f["same_results"] and f["errors"] == 0
    assert f["pool_wall_s"] > 0 and f["dask_wall_s"] > 0 and f["pool_cpu_per_run_ms"] > 0 and f["dask_cpu_per_run_ms"] > 0
