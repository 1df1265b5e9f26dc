"""``aicp bench-sim``: simulated tasks per wall-clock second, and peak memory.

Cases, each in a fresh process so that its peak RSS is its own:

- ``baseline``: scenarios/baseline.toml, one replication of one strategy;
- ``mm100``: M/M/100 at load 0.9 (one agent, concurrency 100, FIFO mailbox), then
  Ciw on the same model with the same number of customers, in the same process;
  the ratio is our tasks/s over Ciw's;
- ``jsq100``: join-the-shortest-queue over 100 single-server agents at load 0.9
  (``least_loaded``, which is JSQ), then a bare SimPy model of the same queue
  (``aicp.lab.bench.simpy_jsq``) with the same number of customers, in the same
  process; the ratio is our tasks/s over bare SimPy's;
- ``scale``: scenarios/scale_1000.toml stopped at ``--scale-tasks`` tasks (1M).

``--dask ADDRESS`` measures something else instead: the cost of running the
simulator's runs on Dask against the local process pool (``aicp.lab.bench.dask_overhead``).

Wall time covers the simulation loop only (building the model is excluded for
every simulator); peak memory is the process's max RSS (``ru_maxrss``). Ratios
compare two simulators run one after the other in the same process, so a loaded
machine moves both; ``--repeat N`` runs the pair N times and reports medians.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import simpy

from aicp.lab.bench import dask_overhead
from aicp.sim import scenario as scenario_mod
from aicp.sim.engine import Simulation
from aicp.sim.scenario import AgentGroup, ExponentialDist, PoissonArrival, RouterSection, Scenario, Workload
from aicp.sim.theory import mmc_sojourn

_SCENARIOS = Path(__file__).resolve().parents[3] / "scenarios"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default="baseline,mm100,jsq100,scale", help="comma-separated: baseline, mm100, jsq100, scale")
    parser.add_argument("--strategy", default="power_of_two", help="strategy for the baseline and scale cases")
    parser.add_argument("--mm-tasks", type=int, default=200_000, help="customers in the M/M/100 and JSQ cases (both simulators)")
    parser.add_argument("--repeat", type=int, default=1, help="run the mm100 and jsq100 pairs N times; medians")
    parser.add_argument("--scale-tasks", type=int, default=1_000_000, help="tasks in the scale_1000 case")
    parser.add_argument("--scenarios", default=str(_SCENARIOS), help="folder holding baseline.toml and scale_1000.toml")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    dask_overhead.add_arguments(parser)


def mm100_scenario(tasks: int, c: int = 100, rho: float = 0.9, mean_ms: float = 100.0) -> Scenario:
    mu = 1000.0 / mean_ms
    lam = rho * c * mu
    return Scenario(
        name="mm100",
        duration_s=tasks / lam * 2.0 + 10.0,  # max_tasks stops arrivals first
        max_tasks=tasks,
        replications=1,
        strategies=["round_robin"],
        sign_cost_us=0.0,
        verify_cost_us=0.0,
        agents=[AgentGroup(count=1, capabilities=["work"], concurrency=c, service_time=ExponentialDist(mean_ms=mean_ms))],
        workload=[Workload(method="work", arrival=PoissonArrival(rate_per_s=lam), timeout_ms=3.6e6)],
        router=RouterSection(timeout_ms=3.6e6, deadline_ms=3.6e6),
    )


def jsq100_scenario(tasks: int, n: int = 100, rho: float = 0.9, mean_ms: float = 100.0) -> Scenario:
    """``n`` single-server agents behind join-the-shortest-queue (``least_loaded``), no latency, no signing cost."""
    lam = rho * n * 1000.0 / mean_ms
    return Scenario(
        name="jsq100",
        duration_s=tasks / lam * 2.0 + 10.0,  # max_tasks stops arrivals first
        max_tasks=tasks,
        replications=1,
        strategies=["least_loaded"],
        sign_cost_us=0.0,
        verify_cost_us=0.0,
        agents=[AgentGroup(count=n, capabilities=["work"], concurrency=1, service_time=ExponentialDist(mean_ms=mean_ms))],
        workload=[Workload(method="work", arrival=PoissonArrival(rate_per_s=lam), timeout_ms=3.6e6)],
        router=RouterSection(timeout_ms=3.6e6, deadline_ms=3.6e6),
    )


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sim_case(s: Scenario, strategy: str, seed: int) -> dict[str, Any]:
    sim = Simulation(s, strategy, np.random.SeedSequence(seed))
    result = sim.run()
    summ = result.summary
    return {
        "tasks": summ["submitted"],
        "wall_s": summ["wall_s"],
        "tasks_per_s": summ["submitted"] / summ["wall_s"],
        "mean_ms": summ["latency_ms"]["mean"],
        "lost": summ["lost"],
    }


def _case(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a child process."""
    out: dict[str, Any] = {"case": name}
    if name == "baseline":
        s = scenario_mod.load(Path(args["scenarios"]) / "baseline.toml")
        out |= _sim_case(s, args["strategy"], args["seed"])
    elif name == "scale":
        n = args["scale_tasks"]
        s = scenario_mod.load(Path(args["scenarios"]) / "scale_1000.toml", {"max_tasks": n})
        rate = sum(getattr(w.arrival, "rate_per_s", 0.0) for w in s.workload) or 1.0
        s = scenario_mod.with_overrides(s, {"duration_s": max(s.duration_s, n / rate * 1.2)})  # max_tasks ends it
        out |= _sim_case(s, args["strategy"], args["seed"])
    elif name == "mm100":
        n = args["mm_tasks"]
        s = mm100_scenario(n)
        pairs = []
        for _ in range(max(1, args.get("repeat", 1))):
            ours = _sim_case(s, "round_robin", args["seed"])
            pairs.append((ours, _ciw_mm100(n, args["seed"])))
        out |= _median_pair(pairs, "ciw")
        out["theory_mean_ms"] = mmc_sojourn(100, 900.0, 10.0) * 1000.0
    elif name == "jsq100":
        from aicp.lab.bench import simpy_jsq

        n = args["mm_tasks"]
        s = jsq100_scenario(n)
        pairs = []
        for _ in range(max(1, args.get("repeat", 1))):
            ours = _sim_case(s, "least_loaded", args["seed"])
            bare = simpy_jsq.run(n, servers=100, rate_per_s=900.0, mean_service_s=0.1, seed=args["seed"])
            theirs = {
                "version": simpy.__version__,
                "tasks": bare.customers,
                "wall_s": bare.wall_s,
                "tasks_per_s": bare.per_wall_s,
                "mean_ms": bare.mean_s * 1000.0,
            }
            pairs.append((ours, theirs))
        out |= _median_pair(pairs, "simpy")
    else:
        raise ValueError(f"unknown case {name!r}")
    out["peak_rss_mib"] = _peak_mib()
    return out


def _median_pair(pairs: list[tuple[dict[str, Any], dict[str, Any]]], other: str) -> dict[str, Any]:
    """The run whose ratio is the median, with every ratio measured (each pair ran back to back)."""
    ratios = [ours["tasks_per_s"] / theirs["tasks_per_s"] for ours, theirs in pairs]
    mid = sorted(range(len(pairs)), key=ratios.__getitem__)[len(pairs) // 2]
    ours, theirs = pairs[mid]
    return ours | {other: theirs, "ratio": statistics.median(ratios), "ratios": ratios}


def _ciw_mm100(tasks: int, seed: int) -> dict[str, Any]:
    import ciw

    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=900.0)],
        service_distributions=[ciw.dists.Exponential(rate=10.0)],
        number_of_servers=[100],
    )
    ciw.seed(seed)
    q = ciw.Simulation(network)
    t0 = time.perf_counter()
    q.simulate_until_max_customers(tasks, method="Finish")
    wall = time.perf_counter() - t0
    recs = q.get_all_records()
    mean = sum(r.waiting_time + r.service_time for r in recs) / len(recs)
    return {
        "version": getattr(ciw, "__version__", "?"),
        "tasks": len(recs),
        "wall_s": wall,
        "tasks_per_s": len(recs) / wall,
        "mean_ms": mean * 1000.0,
    }


def _spread(f: dict[str, Any]) -> str:
    rs = f.get("ratios", [])
    return f" (median of {len(rs)}: {', '.join(f'{r:.2f}' for r in sorted(rs))})" if len(rs) > 1 else ""


def run(args: argparse.Namespace) -> int:
    if args.dask:
        return dask_overhead.run(args)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    params = {
        "scenarios": args.scenarios,
        "strategy": args.strategy,
        "seed": args.seed,
        "mm_tasks": args.mm_tasks,
        "scale_tasks": args.scale_tasks,
        "repeat": args.repeat,
    }
    ctx = mp.get_context("spawn")
    figures = []
    for name in cases:
        print(f"bench-sim: {name} ...", file=sys.stderr, flush=True)
        with ctx.Pool(1) as pool:
            figures.append(pool.apply(_case, (name, params)))
    for f in figures:
        line = f"{f['case']:<9} {f['tasks']:>9,} tasks  {f['wall_s']:7.2f} s  {f['tasks_per_s']:>9,.0f} tasks/s  peak RSS {f['peak_rss_mib']:6.0f} MiB  lost {f['lost']}"
        print(line)
        if f["case"] == "mm100":
            c = f["ciw"]
            print(
                f"          mean {f['mean_ms']:.2f} ms (Erlang C {f['theory_mean_ms']:.2f} ms); "
                f"Ciw {c['version']}: {c['tasks']:,} tasks {c['wall_s']:.2f} s {c['tasks_per_s']:,.0f} tasks/s, mean {c['mean_ms']:.2f} ms"
            )
            print(f"          ratio aicp/Ciw = {f['ratio']:.2f}x{_spread(f)}")
        if f["case"] == "jsq100":
            b = f["simpy"]
            print(
                f"          mean {f['mean_ms']:.2f} ms; bare SimPy {b['version']} JSQ: {b['tasks']:,} tasks {b['wall_s']:.2f} s "
                f"{b['tasks_per_s']:,.0f} tasks/s, mean {b['mean_ms']:.2f} ms"
            )
            print(f"          ratio aicp/SimPy = {f['ratio']:.2f}x{_spread(f)}")
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(figures), indent=2) + b"\n")
    return 0
