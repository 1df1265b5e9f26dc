"""A recorded router trace (docs/TRACE.md) as arrays, for tables and plots.

Times are seconds from the trace's header, the router's clock; a task's latency is
from its ``arrive`` to its ``end``, as the router saw them, the same span the
simulator measures (admission to outcome). Memory: linear in the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aicp import trace


@dataclass
class RecordedRun:
    strategy: str
    arrive_s: np.ndarray  # per task, sorted by arrival
    end_s: np.ndarray  # NaN when the trace has no end for it (cut by a crash)
    completed: np.ndarray  # bool: the outcome was ``completed``
    agent_events: list[tuple[float, str, str]]  # (t_s, agent, "up" | "down")

    def latency_ms(self) -> np.ndarray:
        """Latencies of the completed tasks, in arrival order."""
        return (self.end_s[self.completed] - self.arrive_s[self.completed]) * 1000.0

    def downs(self) -> list[tuple[float, str]]:
        """Agents lost while tasks were still arriving (not the fleet's stop at the end)."""
        last = float(np.nanmax(self.end_s)) if self.end_s.size else 0.0
        return [(t, a) for t, a, kind in self.agent_events if kind == "down" and t <= last]


def load(path: str | Path) -> RecordedRun:
    p = Path(path)
    header: trace.Header | None = None
    arrive: dict[str, float] = {}
    end: dict[str, tuple[float, bool]] = {}
    agents: list[tuple[float, str, str]] = []
    for e in trace.parse(p.read_bytes(), p.name):
        if isinstance(e, trace.Header):
            header = e
            continue
        assert header is not None
        t = e.t - header.t
        if isinstance(e, trace.Arrive):
            arrive[e.task] = t
        elif isinstance(e, trace.End):
            end[e.task] = (t, e.outcome == "completed")
        elif isinstance(e, trace.AgentUp):
            agents.append((t, e.agent, "up"))
        elif isinstance(e, trace.AgentDown):
            agents.append((t, e.agent, "down"))
    assert header is not None
    tasks = sorted(arrive, key=arrive.__getitem__)
    return RecordedRun(
        strategy=header.strategy,
        arrive_s=np.array([arrive[k] for k in tasks], dtype=np.float64),
        end_s=np.array([end[k][0] if k in end else np.nan for k in tasks], dtype=np.float64),
        completed=np.array([end.get(k, (0.0, False))[1] for k in tasks], dtype=bool),
        agent_events=agents,
    )


def percentiles(latency_ms: np.ndarray) -> dict[str, float]:
    if latency_ms.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "samples": 0}
    return {"p50": float(np.percentile(latency_ms, 50)), "p99": float(np.percentile(latency_ms, 99)), "samples": int(latency_ms.size)}
