"""Routing strategies, registered by name: ``strategies.get("power_of_two")``.

A strategy picks one agent from ``candidates``: the registry's list of *active*
agents that have the method's capability. It never sees any other agent, so it
can only ever pick an active, capable one. ``exclude`` holds agent ids already
tried for this task; a strategy returns ``None`` when every candidate is excluded.

Randomness comes only from the ``rng`` passed in, so a seed reproduces a run.
Each strategy keeps its own state (round-robin cursors) and is created per router.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from aicp import errors
from aicp.registry import AgentState

#: How many rejection-sampling rounds trust_weighted tries before an exact O(n) draw.
_REJECTION_TRIES = 32


class Strategy(Protocol):
    name: str

    def choose(
        self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]
    ) -> AgentState | None: ...


def _eligible(candidates: Sequence[AgentState], exclude: Collection[str]) -> Sequence[AgentState]:
    if not exclude:
        return candidates
    return [a for a in candidates if a.agent_id not in exclude]


class RoundRobin:
    """Each capability's active agents in turn."""

    name = "round_robin"

    def __init__(self) -> None:
        self._cursor: dict[str, int] = {}

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        pool = _eligible(candidates, exclude)
        if not pool:
            return None
        i = self._cursor.get(method, 0)
        self._cursor[method] = i + 1
        return pool[i % len(pool)]


class Random:
    """Uniformly at random."""

    name = "random"

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        pool = _eligible(candidates, exclude)
        if not pool:
            return None
        return pool[int(rng.random() * len(pool))]


class LeastLoaded:
    """Fewest in-flight tasks per unit of concurrency; ties go to the earliest registered."""

    name = "least_loaded"

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        best: AgentState | None = None
        best_load = float("inf")
        for a in candidates:
            load = a.in_flight / a.concurrency
            if load < best_load and a.agent_id not in exclude:
                best, best_load = a, load
                if load == 0.0:
                    break
        return best


def _two(pool: Sequence[AgentState], rng: random.Random) -> tuple[AgentState, AgentState]:
    n = len(pool)
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    return pool[i], pool[j]


class PowerOfTwo:
    """Two distinct agents at random; the less loaded wins (Mitzenmacher's power of two choices)."""

    name = "power_of_two"

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        pool = _eligible(candidates, exclude)
        if len(pool) <= 1:
            return pool[0] if pool else None
        a, b = _two(pool, rng)
        return b if b.in_flight * a.concurrency < a.in_flight * b.concurrency else a


class TrustWeighted:
    """Probability proportional to trust / (1 + load).

    Drawn by rejection sampling (exact, O(1) expected when weights are not tiny),
    with an exact linear draw as the fallback.
    """

    name = "trust_weighted"

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        pool = _eligible(candidates, exclude)
        n = len(pool)
        if n == 0:
            return None
        if n == 1:
            return pool[0]
        # Weights are at most 1 (trust <= 1, load >= 0), so accept with probability w.
        rand = rng.random
        for _ in range(_REJECTION_TRIES):
            a = pool[int(rand() * n)]
            if rand() * (1.0 + a.in_flight / a.concurrency) < a.trust:
                return a
        weights = [max(a.trust, 0.0) / (1.0 + a.in_flight / a.concurrency) for a in pool]
        total = sum(weights)
        if total <= 0.0:
            return pool[int(rand() * n)]
        x = rand() * total
        for a, w in zip(pool, weights):
            x -= w
            if x < 0.0:
                return a
        return pool[-1]


class LatencyEwma:
    """Peak-EWMA latency × (in-flight + 1), compared between two random agents (as Finagle and Linkerd do).

    An agent with no latency sample yet costs 0, so new agents get tried first.
    """

    name = "latency_ewma"

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        pool = _eligible(candidates, exclude)
        if len(pool) <= 1:
            return pool[0] if pool else None
        a, b = _two(pool, rng)
        cost_a = a.latency_ewma * (a.in_flight + 1) / a.concurrency
        cost_b = b.latency_ewma * (b.in_flight + 1) / b.concurrency
        return b if cost_b < cost_a else a


_REGISTRY: dict[str, Callable[[], Strategy]] = {}


def register(name: str, factory: Callable[[], Strategy]) -> None:
    """Make a strategy available by name (plugins call this)."""
    _REGISTRY[name] = factory


def get(name: str) -> Strategy:
    """A fresh strategy instance by name."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise errors.LocalError(f"unknown strategy {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return list(_REGISTRY)


for _cls in (RoundRobin, Random, LeastLoaded, PowerOfTwo, TrustWeighted, LatencyEwma):
    register(_cls.name, _cls)
