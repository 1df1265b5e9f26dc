"""``aicp sim SCENARIO``: run a scenario's strategies and replications, write results/<scenario>/<run-id>/."""

from __future__ import annotations

import argparse

from aicp.cli import simargs
from aicp.sim import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    simargs.add_common(parser, replay_service="task")


def run(args: argparse.Namespace) -> int:
    ran = simargs.run_from_args(args, "sim")
    if isinstance(ran, int):
        return ran
    scenario, seed, reps, payload = ran
    print(f"scenario {scenario.name}: {reps} replication(s), seed {seed} -> {payload['run_dir']}")
    for name, r in payload["results"].items():
        lat = r["latency_ms"]
        print(
            f"  {name:<15} mean {report.fmt(lat['mean'])} ms  p99 {report.fmt(lat['p99'])} ms  "
            f"throughput {report.fmt(r['throughput_per_s'], digits=1)}/s  failed {report.fmt(r['failed'], digits=1)}  lost {r['lost']}"
        )
    if payload["error"]:
        print(f"error: {payload['error'].splitlines()[0]}")
        return 1
    return 0
