"""Reading results back for plots and notebooks: where they live, live-bench runs, fault times.

Simulator run folders are read by :mod:`sim.results`; this module adds what the
live benchmark and the plots need, so no notebook carries its own loading code::

    from aicp.lab import runs
    bench = runs.latest_bench(need_sweep=True)   # newest results/bench/<run-id>/ with a sweep
    curve = runs.bench_curve(bench.summary)      # offered, throughput, p50/p90/p99/p999 arrays
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the checkout this package was imported from (an editable install)
REPO_ROOT = Path(__file__).resolve().parents[2]
#: environment variable that moves every result (tests point it at a temporary folder)
RESULTS_ENV = "AICP_RESULTS_DIR"
#: latency percentiles of a bench trial, in the order they are plotted
CURVE_KEYS = ("p50", "p90", "p99", "p999", "max", "mean")


def results_dir() -> Path:
    """``$AICP_RESULTS_DIR``, else ``results/`` of the checkout (so a notebook in ``notebooks/`` finds it too)."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "results"
    return Path("results")


def scenarios_dir() -> Path:
    return REPO_ROOT / "scenarios"


def plots_dir(results: str | Path | None = None) -> Path:
    return Path(results if results is not None else results_dir()) / "plots"


# ----------------------------------------------------------------------------- live benchmark
@dataclass
class BenchRun:
    """One ``aicp bench`` run folder and its ``summary.json``."""

    folder: Path
    summary: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id", self.folder.name))

    @property
    def has_sweep(self) -> bool:
        return bool(self.summary.get("router_sweep"))


def load_bench(run_dir: str | Path) -> BenchRun:
    """Read ``<run_dir>/summary.json`` of an ``aicp bench`` run."""
    folder = Path(run_dir)
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no summary.json (not an aicp bench run folder)")
    summary = json.loads(path.read_text("utf-8"))
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return BenchRun(folder, summary)


def bench_runs(out: str | Path | None = None) -> list[BenchRun]:
    """Every finished bench run under ``<results>/bench/``, oldest first (run ids start with the time)."""
    base = Path(out) if out is not None else results_dir() / "bench"
    if not base.is_dir():
        return []
    runs = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and (p / "summary.json").is_file()):
        try:
            runs.append(load_bench(folder))
        except (ValueError, OSError):
            continue  # a half-written or foreign folder is not a result
    return runs


def latest_bench(out: str | Path | None = None, need_sweep: bool = False) -> BenchRun:
    """The newest bench run that measured the router (and ran ``--sweep`` when ``need_sweep``)."""
    for run in reversed(bench_runs(out)):
        if "router" in run.summary and (run.has_sweep or not need_sweep):
            return run
    base = Path(out) if out is not None else results_dir() / "bench"
    what = "bench run with --sweep" if need_sweep else "bench run"
    raise FileNotFoundError(f"no finished {what} under {base}")


def bench_curve(summary: dict[str, Any], target: str = "router") -> dict[str, np.ndarray]:
    """The latency-versus-throughput curve of ``<target>_sweep`` as arrays, one entry per offered rate.

    Keys: ``offered_per_s``, ``throughput_per_s``, ``lost``, ``errors`` and each of
    ``CURVE_KEYS`` as ``<key>_ms``. Empty arrays when the run has no such sweep.
    """
    trials = [t for t in summary.get(f"{target}_sweep") or [] if isinstance(t, dict)]
    trials.sort(key=lambda t: float(t.get("offered_rate_per_s") or 0.0))

    def column(get: Any) -> np.ndarray:
        return np.array([_num(get(t)) for t in trials], dtype=np.float64)

    out = {
        "offered_per_s": column(lambda t: t.get("offered_rate_per_s")),
        "throughput_per_s": column(lambda t: t.get("throughput_per_s")),
        "lost": column(lambda t: t.get("lost", 0)),
        "errors": column(lambda t: sum((t.get("errors") or {}).values())),
    }
    for key in CURVE_KEYS:
        out[f"{key}_ms"] = column(lambda t, k=key: (t.get("latency_ms") or {}).get(k))
    return out


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- faults of a resolved scenario
@dataclass(frozen=True)
class FaultEvent:
    t_s: float
    kind: str  # "down" (crash, flap down, partition, ...) or "up" (recover, heal, end of a slow spell ...)
    action: str  # the scenario's fault action
    agents: str  # "10 agents" or the named ids


def fault_events(scenario: dict[str, Any], end_s: float | None = None) -> list[FaultEvent]:
    """When each fault of a resolved ``scenario.json`` strikes and ends, flaps expanded, sorted by time.

    Mirrors :mod:`sim.faults`: a flap is down for half a period, then up for half,
    from ``at_s`` until ``until_s`` (or the end of the run).
    """
    end = float(end_s if end_s is not None else scenario.get("duration_s", float("inf")))
    events: list[FaultEvent] = []
    for fault in scenario.get("faults") or []:
        action = str(fault.get("action", "?"))
        at = float(fault.get("at_s", 0.0))
        chosen = fault.get("agents", 1)
        who = f"{chosen} agent{'s' if chosen != 1 else ''}" if isinstance(chosen, int) else ", ".join(map(str, chosen))
        until = fault.get("until_s")
        if action == "flap":
            half = float(fault.get("period_s", 10.0)) / 2.0
            stop = min(float(until) if until is not None else end, end)
            t, down = at, True
            while t < stop:
                events.append(FaultEvent(t, "down" if down else "up", action, who))
                t += half
                down = not down
            if not down:  # the last spell was down: sim.faults brings them back at the stop time
                events.append(FaultEvent(stop, "up", action, who))
            continue
        kind = "up" if action in ("recover", "heal") else "down"
        events.append(FaultEvent(at, kind, action, who))
        if until is not None and kind == "down":
            events.append(FaultEvent(float(until), "up", action, who))
    events.sort(key=lambda e: e.t_s)
    return [e for e in events if e.t_s <= end]
