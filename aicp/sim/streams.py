"""Workload streams: each arrival schedules the next one, so a task costs one SimPy event to arrive.

A stream knows the environment and an ``Intake``: the few calls of the driver that
take tasks in. It never sees the router or the rest of the simulation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import simpy
from simpy.events import Timeout


class Intake(Protocol):
    """What a workload stream needs from the driver."""

    @property
    def stopped(self) -> bool:
        """True once arrivals must stop (``max_tasks`` reached, or every stream ran out)."""
        ...

    def submit(self, method: int, timeout_s: float | None, service_s: float | None, lag_s: float = 0.0) -> None:
        """A task of method ``method`` (an index) arrives now; ``service_s`` fixes its service time (traces);
        ``lag_s``: how long after its intended time it reached the router (a calibrated way in)."""
        ...

    def stream_done(self) -> None:
        """This stream will submit nothing more."""
        ...

    def method_index(self, method: str) -> int:
        """The index of a method name (a trace may name methods no ``[[workload]]`` declares)."""
        ...


class Stream:
    """One workload stream: each arrival schedules the next one (one event per task, no generator)."""

    __slots__ = ("env", "intake", "lags", "method", "timeout_s", "times")

    def __init__(
        self,
        env: simpy.Environment,
        intake: Intake,
        times: Iterator[Any],
        method: int,
        timeout_s: float | None,
        lags: deque[float] | None = None,
    ) -> None:
        self.env, self.intake, self.times, self.method, self.timeout_s = env, intake, times, method, timeout_s
        #: with a calibrated way in (aicp.sim.stack.shifted): each task's lag behind its intended time, in order
        self.lags = lags

    def start(self) -> None:
        self._schedule(next(self.times, None))

    def _schedule(self, item: Any) -> None:
        if item is None or self.intake.stopped:
            self.intake.stream_done()
            return
        now = self.env.now
        Timeout(self.env, item - now if item > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]

    def fire(self, event: Timeout) -> None:
        intake = self.intake
        if intake.stopped:
            intake.stream_done()
            return
        intake.submit(self.method, self.timeout_s, None, 0.0 if self.lags is None else self.lags.popleft())
        item = next(self.times, None)
        if item is None or intake.stopped:
            intake.stream_done()
            return
        now = self.env.now
        Timeout(self.env, item - now if item > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]


class TraceStream(Stream):
    """Rows ``(t, method or None, service_s or None)`` from a trace file."""

    __slots__ = ()

    def _schedule(self, item: Any) -> None:
        if item is None or self.intake.stopped:
            self.intake.stream_done()
            return
        now = self.env.now
        t = item[0]
        Timeout(self.env, t - now if t > now else 0.0, item).callbacks.append(self.fire)  # type: ignore[union-attr]

    def fire(self, event: Timeout) -> None:
        intake = self.intake
        if intake.stopped:
            intake.stream_done()
            return
        row: tuple[float, str | None, float | None] = event.value  # type: ignore[assignment]
        _, method, service = row
        lag_s = 0.0 if self.lags is None else self.lags.popleft()
        intake.submit(self.method if method is None else intake.method_index(method), self.timeout_s, service, lag_s)
        self._schedule(next(self.times, None))
