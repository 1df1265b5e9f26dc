"""``aicp sweep SCENARIO --set KEY=V1,V2 ...``: a parameter grid, every point × strategy × replication in parallel.

Rows come out flat (one per grid point and strategy), ready for a dataframe:
the swept keys, then the aggregated metrics. Each point's runs live in
``<run-dir>/point-<k>/`` with their own resolved scenario.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from aicp.cli import simargs
from aicp.sim import report
from aicp.sim import scenario as scenario_mod
from aicp.sim.runner import (
    RunLog,
    RunOutcome,
    RunSpec,
    aggregate,
    new_run_dir,
    run_many,
    write_aggregate,
    write_inputs,
    write_summary,
)
from aicp.sim.scenario import Scenario, ScenarioError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    simargs.add_common(parser, sets_are_grids=True)
    parser.add_argument("--csv", metavar="FILE", help="also write the flat rows as CSV")


def grid(base: Scenario, axes: dict[str, list[Any]], source: str) -> list[tuple[dict[str, Any], Scenario]]:
    keys = list(axes)
    points = []
    for values in itertools.product(*(axes[k] for k in keys)):
        setting = dict(zip(keys, values))
        points.append((setting, scenario_mod.with_overrides(base, setting, source)))
    return points


def rows_of(points: list[tuple[dict[str, Any], Scenario]], outcomes: list[RunOutcome]) -> list[dict[str, Any]]:
    rows = []
    for k, (setting, _) in enumerate(points):
        agg = aggregate([o for o in outcomes if o.spec_point == k])
        for strategy, r in agg.items():
            row: dict[str, Any] = {"point": k, **setting, "strategy": strategy}
            for key in ("mean", "p50", "p99", "p999"):
                row[f"latency_{key}_ms"] = r["latency_ms"][key]
                row[f"latency_{key}_ms_ci95"] = r["latency_ms_ci95"][key]
            for key in ("throughput_per_s", "completed", "failed", "retries"):
                row[key] = r[key]
            row["lost"] = r["lost"]
            rows.append(row)
    return rows


#: what aggregate.json keeps of a sweep's summary (besides ``runs``): nothing that says where or when
AGGREGATE_KEYS = ("scenario", "seed", "replications", "strategies", "axes", "rows", "error")


def _first_error(outcomes: list[RunOutcome]) -> str | None:
    return next((str(o.summary["error"]) for o in outcomes if o.summary.get("error")), None)


def run(args: argparse.Namespace) -> int:
    try:
        axes = simargs.parse_sets(args.set)
        base = simargs.load(args)
        points = grid(base, axes, args.scenario)
        strategies, seed, reps = simargs.settings(base, args)
        simargs.check_dask(args.dask)
    except ScenarioError as exc:
        return simargs.fail(str(exc))
    folder = new_run_dir(args.out, base, "sweep")
    t0 = time.perf_counter()
    log = RunLog()
    error = None
    try:
        specs: list[RunSpec] = []
        for k, (_, scen) in enumerate(points):
            sub = folder / f"point-{k}"
            sub.mkdir()
            write_inputs(sub, scen, seed, reps, strategies)
            specs.extend(
                RunSpec(scen, name, r, seed, str(sub), point=k, keep_records=not args.no_records)
                for r in range(reps)
                for name in strategies
            )
        run_many(specs, jobs=args.jobs, progress=not args.quiet, dask=args.dask, log=log)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        raise
    finally:
        outcomes = log.in_order()
        rows = rows_of(points, outcomes)
        payload = {
            "scenario": base.name,
            "seed": seed,
            "replications": reps,
            "strategies": strategies,
            "axes": axes,
            "run_dir": str(folder),
            "wall_s": time.perf_counter() - t0,
            "rows": rows,
            "runs": [o.summary for o in outcomes],
            "error": error or _first_error(outcomes),
            "executor": log.executor,
            "retried": log.retried,
        }
        write_summary(folder, payload)
        write_aggregate(folder, {**payload, "error": _first_error(outcomes)}, AGGREGATE_KEYS)
        if error is not None:
            print(f"{error.splitlines()[0].rstrip(': ')}: partial results in {folder}", file=sys.stderr)
    simargs.write_json(args.json, payload)
    if args.csv and rows:
        with Path(args.csv).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    headers = [*axes, "strategy", "mean ms", "p99 ms", "throughput/s", "failed", "lost"]
    table_rows = [
        [
            *(str(row[k]) for k in axes),
            row["strategy"],
            report.fmt(row["latency_mean_ms"], row["latency_mean_ms_ci95"]),
            report.fmt(row["latency_p99_ms"], row["latency_p99_ms_ci95"]),
            report.fmt(row["throughput_per_s"], digits=1),
            report.fmt(row["failed"], digits=1),
            str(row["lost"]),
        ]
        for row in rows
    ]
    print(f"{base.name}: {len(points)} points × {len(strategies)} strategies × {reps} replications -> {folder}")
    print(report.table(headers, table_rows))
    if payload["error"]:
        print(f"error: {str(payload['error']).splitlines()[0]}")
        return 1
    return 0
