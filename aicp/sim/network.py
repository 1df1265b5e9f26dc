"""The link between the router and its agents (SimPy's ``Cable`` pattern).

The link alone knows about delay, loss and partitions: senders hand it a message
and a receiver, and it delivers after one hop of latency, or drops it. A zero
delay is delivered at once, without an event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import Timeout


class Link:
    __slots__ = ("_env", "_instant", "_latency", "_loss", "_uniform", "delivered", "dropped", "partitioned")

    def __init__(
        self,
        env: simpy.Environment,
        latency: Callable[[], float],
        loss: float,
        uniform: Callable[[], float],
        instant: bool = False,
    ) -> None:
        self._env = env
        self._instant = instant  # latency is identically zero: skip the sampler
        self._latency = latency
        self._loss = loss
        self._uniform = uniform
        self.partitioned: set[int] = set()  # agent indices cut off from the router
        self.delivered = 0
        self.dropped = 0

    def send(self, agent: int, receiver: Callable[[Any], object], message: Any, extra_s: float = 0.0) -> bool:
        """Carry ``message`` between the router and agent ``agent`` (either way). False if dropped."""
        if agent in self.partitioned or (self._loss and self._uniform() < self._loss):
            self.dropped += 1
            return False
        self.delivered += 1
        delay = extra_s if self._instant else self._latency() + extra_s
        if delay <= 0.0:
            receiver(message)
        else:
            Timeout(self._env, delay, (receiver, message)).callbacks.append(_deliver)  # type: ignore[union-attr]
        return True

    def control(self, agent: int, receiver: Callable[[Any], object], message: Any) -> None:
        """A connection event (opened, closed): one hop late, never lost, but not across a partition."""
        if agent in self.partitioned:
            return
        delay = self._latency()
        if delay <= 0.0:
            receiver(message)
        else:
            Timeout(self._env, delay, (receiver, message)).callbacks.append(_deliver)  # type: ignore[union-attr]


def _deliver(event: simpy.Event) -> None:
    pair: tuple[Callable[[Any], object], Any] = event.value  # type: ignore[assignment]
    receiver, message = pair
    receiver(message)
