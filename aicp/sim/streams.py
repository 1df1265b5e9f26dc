"""Workload streams: each arrival schedules the next one, so a task costs one SimPy event to arrive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from simpy.events import Timeout

if TYPE_CHECKING:
    from aicp.sim.engine import Simulation


class Stream:
    """One workload stream: each arrival schedules the next one (one event per task, no generator)."""

    __slots__ = ("env", "method", "sim", "timeout_s", "times")

    def __init__(self, sim: Simulation, times: Iterator[Any], method: int, timeout_s: float | None) -> None:
        self.sim, self.env, self.times, self.method, self.timeout_s = sim, sim.env, times, method, timeout_s

    def start(self) -> None:
        self._schedule(next(self.times, None))

    def _schedule(self, item: Any) -> None:
        if item is None or self.sim.stopped:
            self.sim.stream_done()
            return
        now = self.env.now
        Timeout(self.env, item - now if item > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]

    def fire(self, event: Timeout) -> None:
        sim = self.sim
        if sim.stopped:
            sim.stream_done()
            return
        sim.submit(self.method, self.timeout_s, None)
        item = next(self.times, None)
        if item is None or sim.stopped:
            sim.stream_done()
            return
        now = self.env.now
        Timeout(self.env, item - now if item > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]


class TraceStream(Stream):
    """Rows ``(t, method or None, service_s or None)`` from a trace file."""

    __slots__ = ()

    def _schedule(self, item: Any) -> None:
        if item is None or self.sim.stopped:
            self.sim.stream_done()
            return
        now = self.env.now
        t = item[0]
        Timeout(self.env, t - now if t > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]

    def fire(self, event: Timeout) -> None:
        sim = self.sim
        if sim.stopped:
            sim.stream_done()
            return
        _, method, service = event._value
        sim.submit(self.method if method is None else sim.method_index(method), self.timeout_s, service)
        self._schedule(next(self.times, None))
