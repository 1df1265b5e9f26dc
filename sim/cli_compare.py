"""``aicp compare SCENARIO``: every strategy, one table, 95% confidence intervals across replications."""

from __future__ import annotations

import argparse

from sim import cli_common, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_common.add_common(parser)


def run(args: argparse.Namespace) -> int:
    ran = cli_common.run_from_args(args, "compare")
    if isinstance(ran, int):
        return ran
    scenario, seed, reps, payload = ran
    print(
        f"{scenario.name}: {reps} replications (seed {seed}), ± = 95% CI half-width (Student t); results in {payload['run_dir']}"
    )
    print(report.compare_table(payload["results"]))
    if payload["error"]:
        print(f"error: {payload['error'].splitlines()[0]}")
        return 1
    return 0
