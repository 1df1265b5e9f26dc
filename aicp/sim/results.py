"""Reading run folders back (for notebooks and plots).

Usage::

    from aicp.sim import results
    run = results.load_run(results.latest("results", "baseline"))
    run.summary["results"]["power_of_two"]["latency_ms"]["p99"]
    tl = run.timelines("power_of_two-r0")      # t_s, throughput, p50_ms, p99_ms, agents_up, ...
    rec = run.records("power_of_two-r0")       # arrival, dispatch, end, agent, attempts, outcome, method
    rows = run.rows()                          # one flat dict per (strategy, replication)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Run:
    folder: Path
    scenario: dict[str, Any]
    seeds: dict[str, Any]
    meta: dict[str, Any]
    summary: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        """Run labels (``<strategy>-r<k>``) that have timelines on disk."""
        return sorted(p.stem for p in (self.folder / "timelines").glob("*.npz"))

    def timelines(self, label: str) -> dict[str, np.ndarray]:
        return load_npz(self.folder / "timelines" / f"{label}.npz")

    def records(self, label: str) -> dict[str, np.ndarray]:
        return load_npz(self.folder / "records" / f"{label}.npz")

    def rows(self) -> list[dict[str, Any]]:
        return summary_rows(self.summary)


def load_run(folder: str | Path) -> Run:
    f = Path(folder)
    return Run(f, _json(f / "scenario.json"), _json(f / "seeds.json"), _json(f / "meta.json"), load_summary(f))


def load_summary(folder: str | Path) -> dict[str, Any]:
    return _json(Path(folder) / "summary.json")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def latest(out: str | Path, scenario: str, kind: str | Sequence[str] | None = None) -> Path:
    """The newest run folder of ``scenario`` under ``out`` (run ids sort by time).

    ``kind`` keeps only runs of that command (``"sim"``, ``"compare"``, ``"sweep"``:
    the label after the time stamp in the run id), since a sweep folder holds
    ``point-<k>/`` sub-runs where a compare folder holds timelines.
    """
    kinds = None if kind is None else ({kind} if isinstance(kind, str) else set(kind))
    base = Path(out) / scenario
    found = base.iterdir() if base.is_dir() else iter(())
    runs = sorted(p for p in found if (p / "summary.json").is_file() and (kinds is None or run_kind(p) in kinds))
    if not runs:
        what = f"{'/'.join(sorted(kinds))} run" if kinds else "run"
        raise FileNotFoundError(f"no finished {what} of {scenario!r} under {out}")
    return runs[-1]


def run_kind(folder: str | Path) -> str:
    """The command that wrote a run folder: ``20261126T041333Z-compare-1`` -> ``compare``."""
    parts = Path(folder).name.split("-")
    return parts[1] if len(parts) > 1 else ""


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per run (strategy × replication): ready for ``pandas.DataFrame(rows)``."""
    rows = []
    for r in summary.get("runs", []):
        row: dict[str, Any] = {
            k: r.get(k)
            for k in (
                "strategy",
                "replication",
                "point",
                "tasks",
                "completed",
                "failed",
                "lost",
                "retries",
                "throughput_per_s",
                "error",
            )
        }
        for k, v in (r.get("latency_ms") or {}).items():
            row[f"latency_{k}_ms"] = v
        rows.append(row)
    return rows


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data
