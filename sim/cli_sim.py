"""``aicp sim SCENARIO``: run a scenario's strategies and replications, write results/<scenario>/<run-id>/."""

from __future__ import annotations

import argparse

from sim import cli_common, report
from sim.runner import run_scenario
from sim.scenario import ScenarioError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_common.add_common(parser)


def run(args: argparse.Namespace) -> int:
    try:
        overrides = {k: v[-1] for k, v in cli_common.parse_sets(args.set).items()}
        scenario = cli_common.load(args, overrides)
        strategies, seed, reps = cli_common.settings(scenario, args)
    except ScenarioError as exc:
        return cli_common.fail(str(exc))
    payload = run_scenario(
        scenario,
        strategies,
        reps,
        seed,
        args.out,
        jobs=args.jobs,
        progress=not args.quiet,
        keep_records=not args.no_records,
        label="sim",
    )
    out = report.json_results(payload)
    cli_common.write_json(args.json, out)
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
