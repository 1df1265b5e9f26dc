"""``aicp compare SCENARIO``: every strategy, one table, 95% confidence intervals across replications."""

from __future__ import annotations

import argparse

from aicp.cli import simargs
from aicp.sim import report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    simargs.add_common(parser, replay_service="agent")


def run(args: argparse.Namespace) -> int:
    ran = simargs.run_from_args(args, "compare")
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
