"""Arguments shared by ``aicp sim``, ``compare`` and ``sweep``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from aicp.sim import scenario as scenario_mod
from aicp.sim.scenario import Scenario, ScenarioError


def add_common(parser: argparse.ArgumentParser, sets_are_grids: bool = False, replay_service: str | None = None) -> None:
    parser.add_argument("scenario", nargs="?" if replay_service else None, help="scenario file (TOML), e.g. scenarios/baseline.toml")
    if replay_service:
        parser.add_argument("--replay", metavar="TRACE", help="instead of a scenario: replay a recorded live run (aicp serve --record; docs/TRACE.md)")
        parser.add_argument(
            "--service",
            choices=["task", "agent"],
            default=replay_service,
            help=f"with --replay: each task keeps its recorded service time (task), or draws from its agent's recorded samples (agent) (default {replay_service})",
        )
        parser.add_argument(
            "--stack-costs",
            action="store_true",
            help="with --replay: also charge the live stack's costs read from the trace (hops, slot hand-over; "
            "never a task's latency; docs/SIMULATOR.md)",
        )
    parser.add_argument(
        "--strategy", action="append", metavar="NAME", help="strategy to run (repeatable; default: the scenario's list)"
    )
    parser.add_argument("--seed", type=int, help="root seed (default: the scenario's)")
    parser.add_argument("--replications", type=int, help="replications per strategy (default: the scenario's)")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="parallel processes (default: CPUs)")
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run on a Dask cluster instead of --jobs processes: tcp://HOST:8786, or local[:N] for a LocalCluster "
        "of N single-thread worker processes (needs aicp[dask])",
    )
    parser.add_argument("--out", default="results", help="results folder (default: results/)")
    parser.add_argument("--json", metavar="FILE", help="also write the aggregated results as JSON")
    parser.add_argument("--no-records", action="store_true", help="skip the per-task .npz files (timelines are still written)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    help_set = (
        "override: KEY=V1,V2,... (a grid axis; repeatable)"
        if sets_are_grids
        else "override a scenario key: KEY=VALUE (repeatable)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_set)


def load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Scenario:
    replay = getattr(args, "replay", None)
    if replay and args.scenario:
        raise ScenarioError("give a scenario file or --replay TRACE, not both")
    if replay:
        from aicp.sim.replay import scenario_from_trace

        path = Path(replay)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
        stem = path.name.split(".")[0] or "trace"
        folder = Path(args.out) / "replays" / f"{stem}-{args.service}"
        scenario = scenario_from_trace(
            data, folder, name=f"replay-{stem}", service=args.service, stack_costs=getattr(args, "stack_costs", False)
        )
        return scenario_mod.with_overrides(scenario, overrides, str(path)) if overrides else scenario
    if not args.scenario:
        raise ScenarioError("no scenario file given")
    return scenario_mod.load(Path(args.scenario), overrides)


def parse_sets(items: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = [scenario_mod.parse_value(v.strip()) for v in values.split(",")]
    return out


def settings(s: Scenario, args: argparse.Namespace) -> tuple[list[str], int, int]:
    strategies = args.strategy or list(s.strategies)
    seed = args.seed if args.seed is not None else s.seed
    reps = args.replications if args.replications is not None else s.replications
    if reps < 1:
        raise ScenarioError("--replications must be at least 1")
    from aicp import strategies as registry

    unknown = [n for n in strategies if n not in registry.names()]
    if unknown:
        raise ScenarioError(f"unknown strategy {unknown[0]!r}; known: {', '.join(registry.names())}")
    return strategies, seed, reps


def check_dask(address: str | None) -> None:
    """Refuse a malformed ``--dask`` address, or ``--dask`` without the dask extra, before any run starts."""
    if address is None:
        return
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ScenarioError("--dask needs the dask extra: pip install 'aicp[dask]'")
    from aicp.sim.dask_runs import parse_address

    try:
        parse_address(address)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(msgspec.json.format(msgspec.json.encode(payload), indent=2) + b"\n")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_from_args(args: argparse.Namespace, label: str) -> tuple[Scenario, int, int, dict[str, Any]] | int:
    """What ``aicp sim`` and ``aicp compare`` share: load the scenario with its ``--set`` overrides,
    run every strategy and replication, write ``--json``. Returns (scenario, seed, replications,
    payload), or an exit code when the scenario or the arguments are wrong."""
    from aicp.sim import report
    from aicp.sim.runner import run_scenario

    try:
        overrides = {k: v[-1] for k, v in parse_sets(args.set).items()}
        scenario = load(args, overrides)
        strategies, seed, reps = settings(scenario, args)
        check_dask(args.dask)
    except ScenarioError as exc:
        return fail(str(exc))
    payload = run_scenario(
        scenario,
        strategies,
        reps,
        seed,
        args.out,
        jobs=args.jobs,
        progress=not args.quiet,
        keep_records=not args.no_records,
        label=label,
        dask=args.dask,
    )
    write_json(args.json, report.json_results(payload))
    return scenario, seed, reps, payload
