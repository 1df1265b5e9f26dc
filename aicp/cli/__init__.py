"""The ``aicp`` command. Each subcommand lives in its own module, imported only when used.

A module that provides subcommand ``NAME`` exposes ``add_arguments(parser)`` and
``run(args) -> int``; it is listed in ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("aicp.cli.serve", "run the WebSocket router (same as python -m aicp.server)"),
    "agent": ("aicp.cli.agent", "run one or more agents with built-in handlers"),
    "submit": ("aicp.cli.submit", "submit one task and print the verified result"),
    "gateway": ("aicp.cli.gateway", "HTTP control plane and A2A front door in front of a router (FastAPI)"),
    "keygen": ("aicp.cli.keygen", "create an Ed25519 identity file (0600)"),
    "sim": ("aicp.cli.sim", "run a scenario in the simulator"),
    "compare": ("aicp.cli.compare", "compare all strategies of a scenario with 95%% confidence intervals"),
    "sweep": ("aicp.cli.sweep", "run a parameter grid of a scenario in parallel"),
    "bench": ("aicp.lab.bench.live", "benchmark the live router with real processes"),
    "calibrate": ("aicp.lab.calibrate", "measure the live stack's costs for the simulator; --grid: simulator against live, side by side"),
    "bench-core": ("aicp.lab.bench.core", "micro-benchmark the core against raw library calls"),
    "bench-fleet": ("aicp.lab.bench.fleet", "the live router with fleets of very different sizes (e.g. 8 and 10,000 agents) in one run"),
    "bench-sim": ("aicp.lab.bench.sim", "simulator speed: tasks per wall-clock second, and Ciw on M/M/100"),
    "soak": ("aicp.lab.bench.soak", "minutes at half capacity with agents killed and restarted"),
    "plots": ("aicp.lab.plots", "regenerate the plots under results/plots/"),
    "demo": ("aicp.lab.demo", "the main job: compare strategies, a short live bench, plots"),
    "plan-cluster": ("aicp.lab.cluster_plan", "simulate N routers x 10,000 agents: throughput and latency as routers are added"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="aicp", description="Signed agent-to-agent messaging: live router, simulator, benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, (_, help_text) in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    wanted = args_list[0] if args_list and args_list[0] in COMMANDS else None
    if wanted is None:
        parser.parse_args(args_list)  # handles --help and reports an unknown command
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[wanted][0])
    module.add_arguments(subparsers[wanted])
    args = parser.parse_args(args_list)
    try:
        rc = module.run(args)
    except KeyboardInterrupt:  # a command that must clean up does so on its way out (e.g. the simulator writes what it has)
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
