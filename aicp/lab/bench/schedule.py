"""Arrival schedules for the load generator: every task's time, method, deadline and payload size.

``aicp bench --scenario`` draws a schedule from the scenario's workloads (the
simulator's own arrival processes, same seed), and ``aicp bench --arrivals TRACE``
reads it from a recorded trace's ``arrive`` events. The orchestrator writes one
``.npz`` file per load-generator process; each replays its file open loop
(``aicp.lab.bench.loadgen --schedule``), measuring latency from each task's
intended time. Memory: four arrays, linear in the tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from msgspec import Raw

from aicp import trace
from aicp.messages import payload

#: ``{"text":""}``: the JSON around the filler of a payload of a given size
_PAYLOAD_OVERHEAD = len(b'{"text":""}')
DEFAULT_PAYLOAD_BYTES = 64 + _PAYLOAD_OVERHEAD


def body_of_size(size: int) -> Raw:
    """A payload whose JSON encoding is ``size`` bytes (at least the 11 of an empty one)."""
    return payload({"text": "x" * max(0, size - _PAYLOAD_OVERHEAD)})


@dataclass
class Schedule:
    """Tasks sorted by time (seconds from the run's time 0); ``deadline_ms`` NaN = the router's default."""

    t_s: np.ndarray
    method_index: np.ndarray
    methods: list[str]
    deadline_ms: np.ndarray
    size: np.ndarray

    def __len__(self) -> int:
        return int(self.t_s.size)

    @classmethod
    def build(cls, rows: list[tuple[float, str, float | None, int]]) -> Schedule:
        """From ``(t_s, method, deadline_ms or None, payload bytes)`` rows, in any order."""
        rows = sorted(rows, key=lambda r: r[0])
        methods = sorted({r[1] for r in rows})
        index = {m: i for i, m in enumerate(methods)}
        return cls(
            t_s=np.array([r[0] for r in rows], dtype=np.float64),
            method_index=np.array([index[r[1]] for r in rows], dtype=np.int32),
            methods=methods,
            deadline_ms=np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64),
            size=np.array([r[3] for r in rows], dtype=np.int64),
        )

    def split(self, parts: int) -> list[Schedule]:
        """Deal the tasks round-robin over ``parts`` load generators (each keeps time order)."""
        return [
            Schedule(self.t_s[i::parts], self.method_index[i::parts], self.methods, self.deadline_ms[i::parts], self.size[i::parts])
            for i in range(parts)
        ]

    def save(self, path: Path) -> None:
        np.savez(path, t_s=self.t_s, method_index=self.method_index, methods=np.array(self.methods, dtype=str),
                 deadline_ms=self.deadline_ms, size=self.size)

    @classmethod
    def load(cls, path: Path) -> Schedule:
        with np.load(path) as d:
            return cls(d["t_s"], d["method_index"], [str(m) for m in d["methods"]], d["deadline_ms"], d["size"])

    def tasks(self) -> Iterator[tuple[float, str, Raw, float | None]]:
        """``(t_s, method, deadline_ms or None, payload)`` in time order; payloads of one size are built once."""
        bodies: dict[int, Raw] = {}
        for t, m, d, n in zip(self.t_s.tolist(), self.method_index.tolist(), self.deadline_ms.tolist(), self.size.tolist()):
            body = bodies.get(n)
            if body is None:
                body = bodies[n] = body_of_size(n)
            yield t, self.methods[m], body, (None if d != d else d)

    def max_deadline_s(self, default_s: float) -> float:
        """The longest deadline of any task (``default_s`` for those that name none)."""
        unnamed = np.isnan(self.deadline_ms)
        longest = float(self.deadline_ms[~unnamed].max()) / 1000.0 if (~unnamed).any() else 0.0
        return max(longest, default_s if unnamed.any() else 0.0)


def from_trace(data: bytes, name: str = "trace") -> tuple[Schedule, trace.Header]:
    """The recorded arrivals of a trace (docs/TRACE.md): time from the first arrival, method, deadline, payload size."""
    header: trace.Header | None = None
    rows: list[tuple[float, str, float | None, int]] = []
    for e in trace.parse(data, name):
        if isinstance(e, trace.Header):
            header = e
        elif isinstance(e, trace.Arrive):
            rows.append((e.t, e.method, e.timeout_ms, e.bytes))
    if header is None or not rows:
        raise trace.TraceError(f"{name}: the trace has no arrival")
    t0 = min(r[0] for r in rows)
    return Schedule.build([(t - t0, m, d, n) for t, m, d, n in rows]), header
