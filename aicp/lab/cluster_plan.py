"""``aicp plan-cluster``: past one machine in the simulator — throughput and latency as routers are added.

Runs the cluster simulator (``aicp.sim.cluster``: the real ``Router`` and
``ClusterView`` per router) with the same agents (default 10,000, spread evenly) and
the same offered load for each router count (default 1, 2, 3, 5, 10), and prints the
curve: throughput, p50/p99, cross-router share, and how busy the routers' CPUs were.

Routers are modelled as single FIFO servers costing ``--task-cpu-us`` per task (half
at submit, half at the result) and ``--hop-cpu-us`` per message between routers at each
end. The defaults come from ``aicp bench --routers 3`` on a 2-core machine (one
router's CPU per task, and a cross-router task's extra cost); measure yours and pass
them. Agents are placed evenly, tasks arrive evenly over the routers, so most tasks
stay local; ``--placement uneven`` puts agents N:N-1:…:1 instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from aicp.sim import scenario as scenario_mod
from aicp.sim.cluster import ClusterSimulation


def scenario(routers: int, args: argparse.Namespace) -> scenario_mod.Scenario:
    placement = [float(routers - i) for i in range(routers)] if args.placement == "uneven" else []
    data: dict[str, Any] = {
        "name": f"plan-{routers}",
        "seed": args.seed,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "replications": 1,
        "strategies": [args.strategy],
        "sign_cost_us": 0.0,
        "verify_cost_us": 0.0,
        "network": {"latency": {"dist": "constant", "mean_ms": args.network_ms}},
        "agents": [{"count": args.agents, "capabilities": ["w"], "concurrency": 1, "service_time": {"dist": "exponential", "mean_ms": args.service_ms}}],
        "workload": [{"method": "w", "arrival": {"process": "poisson", "rate_per_s": args.rate}, "timeout_ms": args.deadline_ms}],
        "router": {"timeout_ms": args.deadline_ms / 3.0, "deadline_ms": args.deadline_ms, "heartbeat_s": 30.0, "lease_s": 90.0, "max_tasks": 10_000_000},
        "routers": [{"count": routers, "latency_ms": args.router_latency_ms, "placement": placement, "task_cpu_us": args.task_cpu_us,
                     "hop_cpu_us": args.hop_cpu_us}],
    }
    return scenario_mod.from_data(data, f"plan-cluster ({routers} routers)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--routers", default="1,2,3,5,10", help="router counts to run (default 1,2,3,5,10)")
    add("--agents", type=int, default=10_000, help="agents in all (default 10000)")
    add("--service-ms", type=float, default=1000.0, help="mean service time, exponential (default 1000 ms)")
    add("--load", type=float, default=0.7, help="offered load as a share of the agents' capacity (default 0.7)")
    add("--rate", type=float, default=0.0, help="offered tasks/s (overrides --load)")
    add("--task-cpu-us", type=float, default=300.0, help="router CPU per task (default 300 us)")
    add("--hop-cpu-us", type=float, default=60.0, help="router CPU per message between routers, each end (default 60 us)")
    add("--router-latency-ms", type=float, default=0.5, help="one way between routers (default 0.5 ms)")
    add("--network-ms", type=float, default=0.5, help="one way between a router and its agents (default 0.5 ms)")
    add("--placement", choices=["even", "uneven"], default="even")
    add("--strategy", default="power_of_two", help="default power_of_two (O(1) per decision with 10,000 agents)")
    add("--duration", type=float, default=10.0, help="simulated seconds of arrivals (default 10)")
    add("--warmup", type=float, default=3.0)
    add("--deadline-ms", type=float, default=15000.0)
    add("--seed", type=int, default=1)
    add("--json", type=Path, default=None, help="also write the curve to this file")


def run(args: argparse.Namespace) -> int:
    if not args.rate:
        args.rate = args.load * args.agents * 1000.0 / args.service_ms
    counts = [int(x) for x in args.routers.split(",")]
    print(f"plan-cluster: {args.agents} agents (service {args.service_ms:g} ms), offered {args.rate:.0f} tasks/s, strategy {args.strategy}, "
          f"router CPU {args.task_cpu_us:g} us/task + {args.hop_cpu_us:g} us/hop, placement {args.placement}")
    print(f"{'routers':>7} {'throughput/s':>12} {'p50 ms':>9} {'p99 ms':>10} {'cross':>6} {'router CPU busy':>15} {'failed':>7} {'lost':>5} {'wall s':>7}")
    rows = []
    for n in counts:
        s = scenario(n, args)
        t0 = time.perf_counter()
        sim = ClusterSimulation(s, args.strategy, np.random.SeedSequence(args.seed, spawn_key=(0,)))
        summary = sim.run().summary
        wall = time.perf_counter() - t0
        lat = summary["latency_ms"]
        busy = (summary["submitted"] * args.task_cpu_us + 2 * summary["forwards"] * 2 * args.hop_cpu_us) / 1e6 / (n * args.duration)  # over the arrivals
        row = {"routers": n, "throughput_per_s": summary["throughput_per_s"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
               "cross_router_share": summary["cross_router_share"], "router_cpu_busy": busy, "failed": summary["failed"], "lost": summary["lost_total"],
               "duplicates": summary["duplicate_outcomes"], "wall_s": wall}
        rows.append(row)
        p50 = f"{lat['p50']:9.1f}" if lat["p50"] is not None else f"{'-':>9}"
        p99 = f"{lat['p99']:10.1f}" if lat["p99"] is not None else f"{'-':>10}"
        print(f"{n:7d} {row['throughput_per_s']:12.0f} {p50} {p99} {100 * row['cross_router_share']:5.1f}% {100 * busy:14.0f}% "
              f"{row['failed']:7d} {row['lost']:5d} {wall:7.1f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items() if k != "func"}, "curve": rows}, indent=2))
    return 0 if all(r["lost"] == 0 and r["duplicates"] == 0 for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aicp.lab.cluster_plan", description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
