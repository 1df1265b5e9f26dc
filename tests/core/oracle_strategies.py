"""The scan-based registry and strategies, kept as the oracle for the indexed ones in aicp/.

These are the implementations the core shipped before issue 10, unchanged except
for names: the registry rebuilds each capability's active list on every change
(O(n) per add or status change) and the strategies scan or copy that list (O(n)
per decision with exclusions, and always for least_loaded). They are slow and
obviously right; tests/core/test_scale_oracle.py checks that the indexed
versions make the same decisions.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Sequence

from aicp import errors
from aicp.registry import AgentState, Status

_EMPTY: list[AgentState] = []


class OracleRegistry:
    """Agents by id, and the active ones by capability, rebuilt by a scan on every change."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentState] = {}
        self._active_by_cap: dict[str, list[AgentState]] = {}
        self._members_by_cap: dict[str, dict[str, AgentState]] = {}

    def __len__(self) -> int:
        return len(self.agents)

    def get(self, agent_id: str) -> AgentState | None:
        return self.agents.get(agent_id)

    def add(self, state: AgentState) -> None:
        """Insert or replace an agent (a re-registration replaces the old entry's capabilities)."""
        old = self.agents.get(state.agent_id)
        if old is not None and old is not state:
            raise errors.LocalError(f"agent {state.agent_id!r} is already registered; update it instead")
        self.agents[state.agent_id] = state
        for cap in state.capabilities:
            self._members_by_cap.setdefault(cap, {})[state.agent_id] = state
        self._rebuild(state.capabilities)

    def set_capabilities(self, state: AgentState, capabilities: Iterable[str]) -> None:
        old = state.capabilities
        for cap in old:
            members = self._members_by_cap.get(cap)
            if members is not None:
                members.pop(state.agent_id, None)
        state.capabilities = tuple(dict.fromkeys(capabilities))
        for cap in state.capabilities:
            self._members_by_cap.setdefault(cap, {})[state.agent_id] = state
        self._rebuild(set(old) | set(state.capabilities))

    def set_status(self, state: AgentState, status: Status) -> None:
        if state.status is status:
            return
        state.status = status
        self._rebuild(state.capabilities)

    def remove(self, agent_id: str) -> AgentState | None:
        """Forget an agent entirely (its statistics go with it)."""
        state = self.agents.pop(agent_id, None)
        if state is None:
            return None
        for cap in state.capabilities:
            members = self._members_by_cap.get(cap)
            if members is not None:
                members.pop(agent_id, None)
                if not members:
                    del self._members_by_cap[cap]
        self._rebuild(state.capabilities)
        return state

    def agents_with(self, capability: str) -> list[AgentState]:
        """Active agents that have ``capability``, in registration order. Do not mutate."""
        return self._active_by_cap.get(capability, _EMPTY)

    def all_with(self, capability: str) -> list[AgentState]:
        """Every known agent with ``capability``, whatever its status."""
        return list(self._members_by_cap.get(capability, {}).values())

    def capabilities(self) -> list[str]:
        return sorted(self._members_by_cap)

    def count_by_status(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for state in self.agents.values():
            counts[state.status.value] += 1
        return counts

    def snapshot(self) -> list[dict[str, object]]:
        return [state.snapshot() for state in self.agents.values()]

    def _rebuild(self, capabilities: Iterable[str]) -> None:
        for cap in capabilities:
            members = self._members_by_cap.get(cap)
            active = [a for a in members.values() if a.status is Status.ACTIVE] if members else []
            if active:
                self._active_by_cap[cap] = active
            else:
                self._active_by_cap.pop(cap, None)

    def count_with(self, capability: str, status: Status | None = None) -> int:
        """Agents with ``capability`` (and ``status``, when given), by a scan."""
        members = self._members_by_cap.get(capability, {})
        return len(members) if status is None else sum(1 for a in members.values() if a.status is status)


#: How many rejection-sampling rounds trust_weighted tries before an exact O(n) draw.
_REJECTION_TRIES = 32


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


class UniformRandom:
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


ORACLES: dict[str, type] = {
    cls.name: cls for cls in (RoundRobin, UniformRandom, LeastLoaded, PowerOfTwo, TrustWeighted, LatencyEwma)
}
