"""Replications and strategies in parallel processes, each run written to disk.

Every invocation writes ``<out>/<scenario>/<run-id>/``::

    scenario.json   the fully resolved scenario (every default filled in)
    seeds.json      root seed and each replication's SeedSequence (entropy, spawn_key)
    meta.json       package and library versions, command line, start time, wall time
    summary.json    per-run summaries, the aggregate per strategy, any errors, where the runs
                    went (``executor``) and which were sent to a worker twice (``retried``)
    aggregate.json  the same results without anything that says where or when they ran
                    (wall times, folder, executor): byte-identical for the same inputs
    records/<strategy>-r<k>.npz     per-task columns (see sim.metrics)
    timelines/<strategy>-r<k>.npz   per-second series and per-agent arrays (agent_*)

A run that raises still writes what it had, and its error, into the same places.
Runs go to local processes (``jobs``) or to a Dask cluster (``dask``, see
``aicp.sim.dask_runs``); either way the result of a run depends only on its spec.
Replication ``k`` uses the same seed for every strategy (common random numbers),
so strategies are compared on the very same arrivals.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

import aicp
from aicp.sim.engine import RunResult, Simulation
from aicp.sim.scenario import Scenario, to_data
from aicp.sim.stats import mean_ci

#: metrics aggregated across replications, as (output key, path in a run summary)
_LATENCY_KEYS = ("mean", "p50", "p90", "p99", "p999", "max")
_COUNT_KEYS = ("tasks", "completed", "failed", "retries", "throughput_per_s")


@dataclass(frozen=True)
class RunSpec:
    scenario: Scenario
    strategy: str
    replication: int
    seed: int
    out_dir: str | None = None
    point: int = 0  # grid point of a sweep
    keep_records: bool = True
    trace: bool = False

    @property
    def label(self) -> str:
        return f"{self.strategy}-r{self.replication}"

    def seed_sequence(self) -> np.random.SeedSequence:
        return replication_seed(self.seed, self.replication)


def replication_seed(seed: int, replication: int) -> np.random.SeedSequence:
    """Replication ``k`` of root ``seed``: the same as ``SeedSequence(seed).spawn(k + 1)[k]``."""
    return np.random.SeedSequence(seed, spawn_key=(replication,))


@dataclass
class RunOutcome:
    spec_point: int
    strategy: str
    replication: int
    summary: dict[str, Any]
    result: RunResult | None = field(default=None, repr=False)


#: summary keys that measure the machine, not the model: left out of aggregate.json
WALL_KEYS = ("wall_s", "tasks_per_wall_s")
#: what aggregate.json keeps of a sim/compare summary (besides ``runs``)
AGGREGATE_KEYS = ("scenario", "seed", "replications", "strategies", "results", "error")


@dataclass
class RunLog:
    """What a batch of runs has produced so far.

    The caller keeps it, so a batch stopped half-way (Ctrl-C) still has its finished
    runs to write. ``retried`` lists the runs a Dask scheduler sent to a worker more
    than once (their worker died); each of them still has exactly one outcome.
    """

    outcomes: dict[int, RunOutcome] = field(default_factory=dict)  # by index in the spec list
    retried: list[dict[str, Any]] = field(default_factory=list)
    executor: dict[str, Any] = field(default_factory=dict)

    def in_order(self) -> list[RunOutcome]:
        return [self.outcomes[i] for i in sorted(self.outcomes)]


def run_one(spec: RunSpec, keep_result: bool = False, progress: bool = False) -> RunOutcome:
    """Run one replication; write its records and timelines; never raise."""
    sim: Simulation | None = None
    result: RunResult | None = None
    bar = None
    try:
        sim = Simulation(spec.scenario, spec.strategy, spec.seed_sequence(), trace=spec.trace)
        if progress:
            bar = tqdm(
                total=round(spec.scenario.duration_s), desc=f"{spec.label} (sim s)", unit="s", leave=False, file=sys.stderr
            )
            sim.on_second = partial(_advance, bar)
        result = sim.run()
    except Exception as exc:  # recorded, not swallowed: summary["error"] carries it
        err = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if sim is not None:
            try:
                result = sim.result(error=err)
            except Exception:
                result = None
        summary: dict[str, Any] = result.summary if result is not None else {"strategy": spec.strategy, "error": err}
    else:
        summary = result.summary
    finally:
        if bar is not None:
            bar.close()
    summary.update(replication=spec.replication, point=spec.point)
    if spec.out_dir is not None and result is not None:
        write_arrays(Path(spec.out_dir), spec.label, kept_arrays(spec, result))
    return RunOutcome(spec.point, spec.strategy, spec.replication, summary, result if keep_result else None)


def _advance(bar: tqdm, now: float) -> None:  # type: ignore[type-arg]
    done = min(round(now), bar.total)
    if done > bar.n:
        bar.update(done - bar.n)


def kept_arrays(spec: RunSpec, result: RunResult) -> dict[str, dict[str, np.ndarray]]:
    """What the run folder keeps of a run: ``{"timelines": ..., "records": ...}`` (records only if asked)."""
    tl = dict(result.timelines)
    tl.update({f"agent_{k}": v for k, v in result.agents.items()})
    kept = {"timelines": tl}
    if spec.keep_records:
        rec = dict(result.records)
        rec["methods"] = np.array(result.methods)
        if result.trace is not None:
            rec["dispatch_trace"] = result.trace
        kept["records"] = rec
    return kept


def write_arrays(folder: Path, label: str, kept: dict[str, dict[str, np.ndarray]]) -> None:
    """``<folder>/<kind>/<label>.npz`` for each kind (timelines, records) in ``kept``."""
    for kind, arrays in kept.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        np.savez(folder / kind / f"{label}.npz", **arrays)  # type: ignore[arg-type]


def run_many(
    specs: Sequence[RunSpec],
    jobs: int = 1,
    progress: bool = True,
    keep_results: bool = False,
    dask: str | None = None,
    log: RunLog | None = None,
) -> list[RunOutcome]:
    """Run every spec, in ``jobs`` processes when > 1, or on the Dask cluster ``dask``
    (``tcp://host:8786`` or ``local[:N]``); return the outcomes in spec order.

    Outcomes land in ``log`` as they complete, so a caller that passes its own log
    keeps the finished runs when the batch is interrupted.
    """
    log = RunLog() if log is None else log
    if dask is not None:
        from aicp.sim import dask_runs

        dask_runs.run_on_dask(specs, dask, log, progress=progress, keep_results=keep_results)
        return log.in_order()
    log.executor = {"kind": "processes", "jobs": max(1, min(jobs, len(specs)))}
    bar = tqdm(total=len(specs), desc="runs", unit="run", disable=not progress, leave=False, file=sys.stderr)
    try:
        if jobs <= 1 or len(specs) <= 1:
            for i, spec in enumerate(specs):
                log.outcomes[i] = run_one(spec, keep_results, progress=progress)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(specs))) as pool:
                futures = {pool.submit(run_one, spec, keep_results): i for i, spec in enumerate(specs)}
                try:
                    for fut in as_completed(futures):
                        log.outcomes[futures[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: runs not started are dropped
                    raise
    finally:
        bar.close()
    return log.in_order()


def aggregate(outcomes: Sequence[RunOutcome]) -> dict[str, dict[str, Any]]:
    """Per strategy: the mean across replications of each metric, and its 95% CI half-width."""
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for o in outcomes:
        by_strategy.setdefault(o.strategy, []).append(o.summary)
    return {name: aggregate_runs(runs) for name, runs in by_strategy.items()}


def aggregate_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if not r.get("error")]
    out: dict[str, Any] = {"replications": len(ok), "errors": [r["error"] for r in runs if r.get("error")]}
    lat: dict[str, float | None] = {}
    lat_ci: dict[str, float | None] = {}
    for key in _LATENCY_KEYS:
        lat[key], lat_ci[key] = mean_ci([(r.get("latency_ms") or {}).get(key) for r in ok])
    out["latency_ms"], out["latency_ms_ci95"] = lat, lat_ci
    for key in _COUNT_KEYS:
        out[key], out[f"{key}_ci95"] = mean_ci([r.get(key) for r in ok])
    out["lost"] = int(sum(int(r.get("lost", 0)) for r in runs))  # total over replications: must be 0
    failed_by_code: dict[str, float] = {}
    for r in ok:
        for code, n in r.get("failed_by_code", {}).items():
            failed_by_code[code] = failed_by_code.get(code, 0.0) + n / max(len(ok), 1)
    out["failed_by_code"] = failed_by_code
    out["bad_signatures"], _ = mean_ci([r.get("bad_signatures") for r in ok])
    out["wall_s"] = float(sum(r.get("wall_s", 0.0) or 0.0 for r in runs))
    out["tasks_per_wall_s"], _ = mean_ci([r.get("tasks_per_wall_s") for r in ok])
    return out


# ----------------------------------------------------------------------------- run folders
def new_run_dir(out: str | Path, scenario: Scenario, label: str) -> Path:
    base = Path(out) / scenario.name
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        folder = base / (f"{stamp}-{label}" + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {base}")


def write_inputs(folder: Path, scenario: Scenario, seed: int, replications: int, strategies: Sequence[str]) -> None:
    _dump(folder / "scenario.json", to_data(scenario))
    _dump(
        folder / "seeds.json",
        {
            "root_seed": seed,
            "replications": [{"replication": k, "entropy": seed, "spawn_key": [k]} for k in range(replications)],
            "note": "replication k = numpy.random.SeedSequence(root_seed, spawn_key=(k,)); the same for every strategy",
            "strategies": list(strategies),
        },
    )
    _dump(folder / "meta.json", meta())


def meta() -> dict[str, Any]:
    import simpy

    return {
        "package": "aicp",
        "version": aicp.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "simpy": getattr(simpy, "__version__", "?"),
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_summary(folder: Path, payload: dict[str, Any]) -> Path:
    path = folder / "summary.json"
    _dump(path, payload)
    return path


def without_wall(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` less its wall-clock keys (``WALL_KEYS``)."""
    return {k: v for k, v in obj.items() if k not in WALL_KEYS}


def write_aggregate(folder: Path, payload: dict[str, Any], keys: Sequence[str]) -> Path:
    """``aggregate.json``: ``payload[keys]`` and the per-run summaries, less anything that
    says where or when the runs went (wall times, folder, executor, retries), so that
    the same inputs give the same bytes on any machine or cluster."""
    doc: dict[str, Any] = {k: payload[k] for k in keys if k in payload}
    if "results" in doc:
        doc["results"] = {name: without_wall(r) for name, r in doc["results"].items()}
    doc["runs"] = [without_wall(r) for r in payload.get("runs", [])]
    path = folder / "aggregate.json"
    _dump(path, doc)
    return path


def _dump(path: Path, obj: Any) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(obj), indent=2) + b"\n")


def run_scenario(
    scenario: Scenario,
    strategies: Sequence[str],
    replications: int,
    seed: int,
    out: str | Path,
    jobs: int = 1,
    progress: bool = True,
    keep_records: bool = True,
    label: str = "sim",
    dask: str | None = None,
) -> dict[str, Any]:
    """The whole pipeline for one scenario: folder, runs, aggregate, summary.json and
    aggregate.json (also when interrupted: then with the runs finished so far). Returns the summary."""
    folder = new_run_dir(out, scenario, label)
    t0 = time.perf_counter()
    log = RunLog()
    error: str | None = None
    try:
        write_inputs(folder, scenario, seed, replications, strategies)
        specs = [
            RunSpec(scenario, name, k, seed, str(folder), keep_records=keep_records)
            for k in range(replications)
            for name in strategies
        ]
        run_many(specs, jobs=jobs, progress=progress, dask=dask, log=log)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        raise
    finally:
        outcomes = log.in_order()
        payload = {
            "scenario": scenario.name,
            "seed": seed,
            "replications": replications,
            "strategies": list(strategies),
            "run_dir": str(folder),
            "wall_s": time.perf_counter() - t0,
            "results": aggregate(outcomes),
            "runs": [o.summary for o in outcomes],
            "error": error or _first_error(outcomes),
            "executor": log.executor,
            "retried": log.retried,
        }
        write_summary(folder, payload)
        write_aggregate(folder, {**payload, "error": _first_error(outcomes)}, AGGREGATE_KEYS)
        if error is not None:
            print(f"{error.splitlines()[0].rstrip(': ')}: partial results in {folder}", file=sys.stderr)
    return payload



def _first_error(outcomes: Sequence[RunOutcome]) -> str | None:
    for o in outcomes:
        if o.summary.get("error"):
            return f"{o.strategy} r{o.replication}: {o.summary['error']}"
    return None
