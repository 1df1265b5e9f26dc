"""Per-task records in growing numpy arrays, per-second timelines, and one run's summary.

Times are simulated seconds. Latency is end - arrival of completed tasks that
arrived at or after ``warmup_s``; failures are counted over the same tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aicp import errors

# outcome codes (per-task records)
PENDING = 0
COMPLETED = 1
OUTCOME_CODES: dict[str, int] = {
    errors.TIMEOUT: 2,
    errors.AGENT_FAILED: 3,
    errors.NO_AGENT: 4,
    errors.OVERLOADED: 5,
}
OTHER_FAILURE = 9
OUTCOME_NAMES: dict[int, str] = {PENDING: "pending", COMPLETED: "completed", OTHER_FAILURE: "other"} | {
    v: k for k, v in OUTCOME_CODES.items()
}

_FIELDS: dict[str, tuple[type | str, float | int]] = {
    "arrival": ("f8", np.nan),
    "dispatch": ("f8", np.nan),  # first dispatch
    "end": ("f8", np.nan),
    "agent": ("i4", -1),  # last agent dispatched to
    "attempts": ("i2", 0),
    "outcome": ("i1", PENDING),
    "method": ("i2", 0),
}


class Records:
    """Column lists, one row per task, doubled when full; numpy arrays at the end (``arrays()``).

    Plain lists while the run goes: storing a Python float into a list costs a third
    of storing it into a numpy array, and the hot path stores seven values per task.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.capacity = max(16, int(capacity))
        self.columns: dict[str, list[Any]] = {name: [fill] * self.capacity for name, (_, fill) in _FIELDS.items()}
        self._bind()

    def _bind(self) -> None:
        c = self.columns
        self.arrival, self.dispatch, self.end = c["arrival"], c["dispatch"], c["end"]
        self.agent, self.attempts, self.outcome, self.method = c["agent"], c["attempts"], c["outcome"], c["method"]

    def add(self, t: float, method: int) -> int:
        i = self.n
        if i == self.capacity:
            self.grow()
        self.arrival[i] = t
        if method:
            self.method[i] = method
        self.n = i + 1
        return i

    def grow(self) -> None:
        for name, (_, fill) in _FIELDS.items():
            self.columns[name].extend([fill] * self.capacity)  # in place: the bound columns stay valid
        self.capacity *= 2

    def arrays(self) -> dict[str, np.ndarray]:
        n = self.n
        return {name: np.array(self.columns[name][:n], dtype=_FIELDS[name][0]) for name in _FIELDS}


def latency_stats(lat_s: np.ndarray) -> dict[str, float | None]:
    if lat_s.size == 0:
        return {k: None for k in ("mean", "p50", "p90", "p99", "p999", "max")}
    ms = lat_s * 1000.0
    p50, p90, p99, p999 = np.percentile(ms, [50.0, 90.0, 99.0, 99.9]).tolist()
    return {"mean": float(ms.mean()), "p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": float(ms.max())}


def summarize(rec: dict[str, np.ndarray], warmup_s: float, end_s: float) -> dict[str, Any]:
    """Counts and latency percentiles of the tasks that arrived in [warmup_s, end_s); throughput over that span."""
    measured = rec["arrival"] >= warmup_s
    outcome = rec["outcome"]
    done = measured & (outcome == COMPLETED)
    failed = measured & (outcome != COMPLETED) & (outcome != PENDING)
    codes = {OUTCOME_NAMES.get(int(c), str(int(c))): int(n) for c, n in zip(*np.unique(outcome[failed], return_counts=True))}
    span = max(end_s - warmup_s, 1e-12)
    lat = rec["end"][done] - rec["arrival"][done]
    attempts = rec["attempts"][measured].astype(np.int64)
    return {
        "tasks": int(measured.sum()),
        "completed": int(done.sum()),
        "failed": int(failed.sum()),
        "failed_by_code": codes,
        "lost": int((outcome == PENDING).sum()),  # over every task, warm-up included
        "retries": int(np.clip(attempts - 1, 0, None).sum()),
        "throughput_per_s": float(done.sum()) / span,
        "latency_ms": latency_stats(lat),
        "wait_ms_mean": float(((rec["dispatch"][done] - rec["arrival"][done]) * 1000.0).mean()) if done.any() else None,
    }


def timelines(rec: dict[str, np.ndarray], samples: dict[str, np.ndarray], window_s: float, end_s: float) -> dict[str, np.ndarray]:
    """Per-second series: arrivals, throughput, failures, p50/p99 latency over a sliding window, plus sampled state."""
    nbins = max(1, int(np.ceil(end_s)))
    edges = np.arange(nbins + 1, dtype=np.float64)
    ended = rec["outcome"] != PENDING
    done = rec["outcome"] == COMPLETED
    out: dict[str, np.ndarray] = {"t_s": edges[:-1]}
    out["arrivals"] = np.histogram(rec["arrival"], edges)[0]
    out["throughput"] = np.histogram(rec["end"][done], edges)[0]
    out["failures"] = np.histogram(rec["end"][ended & ~done], edges)[0]
    end = rec["end"][done]
    lat = (end - rec["arrival"][done]) * 1000.0
    order = np.argsort(end, kind="stable")
    end, lat = end[order], lat[order]
    hi_idx = np.searchsorted(end, edges[1:], side="left")
    lo_idx = np.searchsorted(end, edges[1:] - window_s, side="left")
    p50 = np.full(nbins, np.nan)
    p99 = np.full(nbins, np.nan)
    for b in range(nbins):
        lo, hi = lo_idx[b], hi_idx[b]
        if hi > lo:
            p50[b], p99[b] = np.percentile(lat[lo:hi], [50.0, 99.0])
    out["p50_ms"] = p50
    out["p99_ms"] = p99
    for name, series in samples.items():
        out[name] = series
    return out
