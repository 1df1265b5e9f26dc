"""``aicp compare SCENARIO``: every strategy, one table, 95% confidence intervals across replications."""

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
        label="compare",
    )
    cli_common.write_json(args.json, report.json_results(payload))
    print(
        f"{scenario.name}: {reps} replications (seed {seed}), ± = 95% CI half-width (Student t); results in {payload['run_dir']}"
    )
    print(report.compare_table(payload["results"]))
    if payload["error"]:
        print(f"error: {payload['error'].splitlines()[0]}")
        return 1
    return 0
