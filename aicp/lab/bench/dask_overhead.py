"""``aicp bench-sim --dask ADDRESS``: what running the simulator's runs on Dask costs.

The same batches go through the local process pool (``run_many(jobs=N)``) and through
Dask (``run_many(dask=...)``), in the same invocation, on the same N cores (N = the
cluster's worker threads; ``local:N`` starts N single-thread worker processes):

- ``short``: ``--dask-short-runs`` (500) runs of a few hundred tasks each, where the
  fixed cost of a run dominates, in two rounds of 250 (pool, Dask, Dask, pool). Per-run
  overhead = (Dask wall − pool wall) × N / runs, medians over the rounds:
  the time each run adds on one worker slot. Goal: under 50 ms. Also the CPU time per
  run of every process involved (client, scheduler, workers), which a loaded machine
  disturbs less than wall time.
- ``long``: 2 × N runs sized to ``--dask-long-s`` (2.5 s) each from a calibration run,
  ``--dask-rounds`` (5) times on each side, interleaved (pool, Dask, Dask, pool, ...) so
  that a change in the machine's load falls on both sides alike, within
  ``--dask-budget-s``. Ratio: the median of the rounds' Dask/pool wall-time ratios.
  Goal: Dask's wall time within 10% of the pool's. On a machine loaded by other work the
  wall times say little (the kernel shares the cores between everyone's processes); the
  CPU per run of all processes, Dask's over the pool's, is then the steadier figure, and
  an upper bound of the idle wall-time ratio (Dask's background costs per second, and a
  loaded machine stretches each run's seconds).

Both modes write a real run folder (timelines and per-task records, the CLI default):
the pool's workers write their own files, Dask's come back to this process, which
writes them. Starting the LocalCluster (and importing aicp on its workers) is timed
apart, since a cluster serves many sweeps. Each batch checks that both modes gave the
same results (summaries less wall times).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil

from aicp.sim.engine import Simulation
from aicp.sim.runner import RunOutcome, RunSpec, run_many, without_wall
from aicp.sim.scenario import Scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="instead of the speed cases: Dask (tcp://HOST:8786 or local[:N]) against the local process pool, same cores",
    )
    parser.add_argument("--dask-short-runs", type=int, default=500, help="short runs on each side, in two interleaved rounds")
    parser.add_argument("--dask-short-tasks", type=int, default=300, help="tasks in each short run")
    parser.add_argument("--dask-long-s", type=float, default=2.5, help="target wall seconds of each long run (>= 2)")
    parser.add_argument("--dask-rounds", type=int, default=5, help="rounds of the long batch on each side, interleaved")
    parser.add_argument("--dask-budget-s", type=float, default=240.0, help="no new round of the long batch after this many seconds")


def _scenario(tasks: int) -> Scenario:
    from aicp.lab.bench.sim import mm100_scenario

    return mm100_scenario(tasks)


def _batch(s: Scenario, runs: int, seed: int, folder: Path) -> list[RunSpec]:
    return [RunSpec(s, "round_robin", k, seed, str(folder)) for k in range(runs)]


def _cpu_s() -> float:
    """CPU seconds of this process (client, and a LocalCluster's scheduler) and of its
    children: live ones (Dask workers) and reaped ones (the pool's processes)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += c.user + c.system
    return total


def _timed(specs: list[RunSpec], **how: Any) -> tuple[float, float, list[RunOutcome]]:
    """Wall and CPU seconds of one batch."""
    c0, t0 = _cpu_s(), time.perf_counter()
    outcomes = run_many(specs, progress=False, **how)
    return time.perf_counter() - t0, _cpu_s() - c0, outcomes


def _same(a: list[RunOutcome], b: list[RunOutcome]) -> bool:
    def enc(outs: list[RunOutcome]) -> bytes:
        return msgspec.json.encode([without_wall(o.summary) for o in outs])

    return enc(a) == enc(b)


def _compare(
    name: str, specs_of: Any, workers: int, address: str, rounds: int = 1, budget_s: float = math.inf, idle_cpu: float = 0.0
) -> dict[str, Any]:
    """``rounds`` rounds of the same batch through the pool and through Dask, in alternating
    order (pool, Dask, Dask, pool, pool, ...) so that drift in the machine's load falls on
    both sides alike; no new round starts after ``budget_s``. Walls are medians over rounds;
    the ratio is the median of the rounds' Dask/pool ratios. ``idle_cpu``: CPU seconds per
    second the idle cluster spends, which the pool's CPU includes (the cluster stays up
    while the pool runs) and a pool without a cluster would not."""
    pool_walls: list[float] = []
    dask_walls: list[float] = []
    cpu = {"pool": 0.0, "dask": 0.0}
    same, errors, run_walls, tasks = True, 0, [], []
    t0 = time.perf_counter()
    for r in range(rounds):
        if r and time.perf_counter() - t0 > budget_s:
            break
        with tempfile.TemporaryDirectory(prefix=f"aicp-bench-dask-{name}-") as tmp:
            outs: dict[str, list[RunOutcome]] = {}
            for side in ("pool", "dask") if r % 2 == 0 else ("dask", "pool"):
                specs = specs_of(Path(tmp) / side)
                print(f"bench-sim --dask: {name} round {r + 1}/{rounds}: {len(specs)} runs, {side} ...", file=sys.stderr, flush=True)
                how: dict[str, Any] = {"jobs": workers} if side == "pool" else {"dask": address}
                wall, used, outs[side] = _timed(specs, **how)
                (pool_walls if side == "pool" else dask_walls).append(wall)
                cpu[side] += used
        same = same and _same(outs["pool"], outs["dask"])
        errors += sum(1 for o in [*outs["pool"], *outs["dask"]] if o.summary.get("error"))
        run_walls += [float(o.summary.get("wall_s") or 0.0) for o in outs["pool"]]
        tasks += [int(o.summary.get("submitted", 0)) for o in outs["pool"]]
    done = len(pool_walls)
    runs = len(tasks) // done
    pool_wall, dask_wall = statistics.median(pool_walls), statistics.median(dask_walls)
    return {
        "case": name,
        "rounds": done,
        "runs": runs,
        "workers": workers,
        "tasks_per_run": int(statistics.median(tasks)),
        "median_run_wall_s": statistics.median(run_walls),
        "pool_wall_s": pool_wall,
        "dask_wall_s": dask_wall,
        "pool_walls_s": pool_walls,
        "dask_walls_s": dask_walls,
        "overhead_per_run_ms": (dask_wall - pool_wall) * workers / runs * 1000.0,
        "pool_cpu_per_run_ms": cpu["pool"] / (runs * done) * 1000.0,
        "pool_cpu_less_idle_cluster_per_run_ms": (cpu["pool"] - idle_cpu * sum(pool_walls)) / (runs * done) * 1000.0,
        "dask_cpu_per_run_ms": cpu["dask"] / (runs * done) * 1000.0,
        "ratio": statistics.median(d / p for d, p in zip(dask_walls, pool_walls)),
        "same_results": same,
        "errors": errors,
    }


def _calibrate(seconds: float, seed: int) -> int:
    """Tasks for one run of about ``seconds`` of wall time, from a 20 000-task run in this process."""
    probe = 20_000
    result = Simulation(_scenario(probe), "round_robin", np.random.SeedSequence(seed)).run()
    rate = result.summary["submitted"] / max(result.summary["wall_s"], 1e-6)
    return max(probe, int(rate * seconds))


def run(args: argparse.Namespace) -> int:
    from aicp.sim import dask_runs

    try:
        dask_runs.parse_address(args.dask)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed = args.seed
    t0 = time.perf_counter()
    with dask_runs.connect(args.dask) as client:
        client.run(importlib.import_module, "aicp.sim.dask_runs")  # workers import the simulator once, as in a long-lived cluster
        startup = time.perf_counter() - t0
        workers = sum(client.nthreads().values())
        address = str(client.scheduler_info()["address"])
        c0, t1 = _cpu_s(), time.perf_counter()
        time.sleep(3.0)
        idle_cpu = (_cpu_s() - c0) / (time.perf_counter() - t1)
        print(
            f"bench-sim --dask: {workers} worker thread(s) at {address}, ready in {startup:.1f} s; "
            f"idle, the cluster spends {idle_cpu * 1000:.1f} ms of CPU per second",
            file=sys.stderr,
        )
        short = _scenario(args.dask_short_tasks)
        half = max(1, args.dask_short_runs // 2)
        figures = [_compare("short", lambda f: _batch(short, half, seed, f), workers, address, 2, args.dask_budget_s, idle_cpu)]
        long_tasks = _calibrate(args.dask_long_s, seed)
        long = _scenario(long_tasks)
        figures.append(
            _compare("long", lambda f: _batch(long, 2 * workers, seed, f), workers, address, max(1, args.dask_rounds), args.dask_budget_s, idle_cpu)
        )
    doc = {"address": args.dask, "workers": workers, "cluster_ready_s": startup, "idle_cluster_cpu_ms_per_s": idle_cpu * 1000, "cases": figures}
    print(f"Dask {args.dask} ({workers} workers, ready in {startup:.1f} s) against a local process pool of {workers}:")
    for f in figures:
        print(
            f"  {f['case']:<5} {f['rounds']} × {f['runs']:>3} runs × {f['tasks_per_run']:>7,} tasks (median run {f['median_run_wall_s']:.3f} s): "
            f"pool {f['pool_wall_s']:6.2f} s, Dask {f['dask_wall_s']:6.2f} s (medians), ratio {f['ratio']:.3f}, "
            f"overhead {f['overhead_per_run_ms']:+.1f} ms/run, same results: {'yes' if f['same_results'] else 'NO'}, errors {f['errors']}"
        )
        print(
            f"        CPU per run (all processes): pool {f['pool_cpu_per_run_ms']:.1f} ms, Dask {f['dask_cpu_per_run_ms']:.1f} ms "
            f"({f['dask_cpu_per_run_ms'] - f['pool_cpu_per_run_ms']:+.1f} ms, ×{f['dask_cpu_per_run_ms'] / f['pool_cpu_per_run_ms']:.3f}); "
            f"the pool less the idle cluster's share {f['pool_cpu_less_idle_cluster_per_run_ms']:.1f} ms "
            f"(Dask ×{f['dask_cpu_per_run_ms'] / f['pool_cpu_less_idle_cluster_per_run_ms']:.3f})"
        )
    s, lg = figures
    print(f"  per-run overhead (short runs): {s['overhead_per_run_ms']:+.1f} ms (goal < 50 ms)")
    print(
        f"  wall-time ratio for {lg['median_run_wall_s']:.1f}-s runs: {lg['ratio']:.3f}, median of {lg['rounds']} interleaved rounds "
        f"of {lg['runs']} runs per side (each round: {', '.join(f'{d / p:.3f}' for d, p in zip(lg['dask_walls_s'], lg['pool_walls_s']))}) "
        "(goal <= 1.10)"
    )
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n")
    return 0 if all(f["same_results"] and not f["errors"] for f in figures) else 1
