"""Routing strategies, registered by name: ``strategies.get("power_of_two")``.

A strategy picks one agent from ``candidates``: the registry's ``ActivePool`` of
*active* agents that have the method's capability, in join order. It never sees
any other agent, so it can only ever pick an active, capable one. ``exclude``
holds agent ids already tried for this task (a handful); a strategy returns
``None`` when every candidate is excluded. Excluded agents are skipped by rank,
never by copying the pool.

Randomness comes only from the ``rng`` passed in, so a seed reproduces a run. The
strategies draw exactly the numbers the scan-based versions they replaced drew
(tests/core/oracle_strategies.py) and pick the same agents, so old seeds
reproduce old runs. Each strategy keeps its own state (round-robin cursors, load
and weight indexes) and is created per router.

Cost per decision, n = active agents with the capability, m = excluded ids:

=============== ============================================================
round_robin     O((m + 1) log n); O(1) when every member is active, no exclusions
random          same as round_robin
least_loaded    O(log n) amortized (one heap of (load, slot), lazy keys), plus O(m log n)
power_of_two    two picks: O((m + 1) log n)
trust_weighted  O(1) expected (rejection), O(log n) worst (Fenwick tree of weights)
latency_ewma    two picks: O((m + 1) log n)
=============== ============================================================

Index upkeep is paid when the router assigns ``in_flight`` or ``trust``:
least_loaded O(log n) per fall of a load (nothing for a rise or a trust change),
trust_weighted O(log n) per change; the others keep no index.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Collection
from typing import Protocol

from aicp import errors
from aicp.fenwick import Fenwick
from aicp.registry import NO_RANKS, ActivePool, AgentState, Status

#: How many rejection-sampling rounds trust_weighted tries before an exact draw from its tree.
_REJECTION_TRIES = 32
#: Stale entries an index tolerates before it cleans up, beyond one per live entry (tests set 0).
INDEX_SLACK = 16


class Strategy(Protocol):
    name: str

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None: ...


class RoundRobin:
    """Each capability's active agents in turn, in join order.

    The cursor counts decisions per method and picks ``pool[cursor % len(pool)]``
    among the eligible agents, so over a pool that does not change every agent gets
    one task per round, and an agent that joins is served within one round."""

    name = "round_robin"

    def __init__(self) -> None:
        self._cursor: dict[str, int] = {}

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        ranks = candidates.excluded_ranks(exclude) if exclude else NO_RANKS
        n = len(candidates) - len(ranks)
        if n <= 0:
            return None
        i = self._cursor.get(method, 0)
        self._cursor[method] = i + 1
        return candidates.nth(i % n, ranks)


class UniformRandom:
    """Uniformly at random among the eligible agents (registered as ``random``)."""

    name = "random"

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        ranks = candidates.excluded_ranks(exclude) if exclude else NO_RANKS
        n = len(candidates) - len(ranks)
        if n <= 0:
            return None
        return candidates.nth(int(rng.random() * n), ranks)


def _load_key(agent: AgentState) -> float:
    """``agent.load`` as ``_LoadIndex`` keys it: the int ``in_flight`` when ``concurrency`` is 1,
    else the float ``in_flight / concurrency``. The int equals the float exactly and Python
    compares ints with floats exactly, so keys order and tie as the loads do; the common case
    allocates no float, and small ints are shared objects that a heap comparison finds in cache."""
    conc = agent._concurrency
    return agent._in_flight if conc == 1 else agent._in_flight / conc


class _LoadIndex:
    """Active agents by load (in_flight / concurrency), then join order: one heap, lazy keys.

    The heap holds ``(load, slot)`` entries. Invariant: every active agent has an
    entry whose load is at most its current load (its latest entry: one is pushed
    when it becomes active and whenever its load falls). A rise needs nothing at
    once (agents do not even report it, ``watches_load_rise = False``): when ``best``
    meets an entry below its agent's current load it re-keys it in place, and it
    drops entries above the current load (a lower one exists) and those of
    inactive slots. The first entry that matches its agent's current load is then
    the least loaded agent, ties to the lower slot (the earlier join), because no
    other active agent can have a smaller ``(load, slot)``. The heap is rebuilt from
    the pool when it holds more than four times as many entries as there are active
    agents (plus ``INDEX_SLACK``), so memory stays O(n); a fall costs O(log n),
    ``best`` O(log n) amortized. Loads compare as the scan's floats did (``_load_key``), so
    agents with different concurrency tie exactly when the scan said they did.
    """

    __slots__ = ("_heap", "_pool")
    watches_trust = False
    watches_load_rise = False

    def __init__(self, pool: ActivePool) -> None:
        self._pool = pool
        self._heap: list[tuple[float, int]] = []
        self.rebuild()

    def rebuild(self) -> None:
        """O(n) (n: the pool's slots)."""
        active = Status.ACTIVE
        heap = [(_load_key(a), slot) for slot, a in enumerate(self._pool._slots) if a is not None and a.status is active]
        heapq.heapify(heap)
        self._heap = heap

    def _push(self, slot: int, agent: AgentState) -> None:
        heap = self._heap
        heapq.heappush(heap, (_load_key(agent), slot))
        if len(heap) > 4 * self._pool._n_active + INDEX_SLACK:
            self.rebuild()

    def activated(self, slot: int, agent: AgentState) -> None:
        self._push(slot, agent)

    def deactivated(self, slot: int, agent: AgentState) -> None:
        pass  # its entries are dropped when they reach the top

    changed = _push  # a fall (or an assignment): the agent's latest entry must not be above its load

    def best(self, excluded: Collection[int]) -> int | None:
        """The slot of the least loaded, earliest joined active agent not in ``excluded``."""
        heap, slots = self._heap, self._pool._slots
        pop, active = heapq.heappop, Status.ACTIVE
        skipped: list[tuple[float, int]] | None = None
        found: int | None = None
        while heap:
            entry = heap[0]
            key, slot = entry
            agent = slots[slot] if slot < len(slots) else None
            if agent is None or agent.status is not active:
                pop(heap)  # not active any more
                continue
            conc = agent._concurrency  # _load_key(agent), inlined
            load = agent._in_flight if conc == 1 else agent._in_flight / conc
            if load != key:
                if load > key:
                    heapq.heapreplace(heap, (load, slot))  # the load rose: re-key
                else:
                    pop(heap)  # the load fell since: a lower entry exists
                continue
            if excluded and slot in excluded:
                if skipped is None:
                    skipped = []
                skipped.append(pop(heap))
                while heap and heap[0] == entry:  # the same agent may be in twice at the same load
                    pop(heap)
                continue
            found = slot
            break
        if skipped:
            for entry in skipped:
                heapq.heappush(heap, entry)
        return found


class LeastLoaded:
    """Fewest in-flight tasks per unit of concurrency (join the shortest queue).

    Ties go to the agent that joined the capability's pool first (registration
    order; re-registering after death or with new capabilities joins again, at the
    end). Exact: the same choice as a scan of the whole pool, from a heap of (load, slot)
    (``_LoadIndex``) in O(log n) amortized."""

    name = "least_loaded"

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        index = candidates._indexes.get(self)
        if index is None:
            index = candidates.index_for(self, _LoadIndex)
        slot = index.best(candidates.excluded_slots(exclude) if exclude else ())  # type: ignore[attr-defined]
        return None if slot is None else candidates._slots[slot]


def _two(pool: ActivePool, n: int, ranks: list[int], rng: random.Random) -> tuple[AgentState, AgentState]:
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    return pool.nth(i, ranks), pool.nth(j, ranks)


class PowerOfTwo:
    """Two distinct agents at random; the less loaded wins (Mitzenmacher's power of two choices)."""

    name = "power_of_two"

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        ranks = candidates.excluded_ranks(exclude) if exclude else NO_RANKS
        n = len(candidates) - len(ranks)
        if n <= 1:
            return candidates.nth(0, ranks) if n == 1 else None
        a, b = _two(candidates, n, ranks, rng)
        return b if b._in_flight * a._concurrency < a._in_flight * b._concurrency else a


def _weight(agent: AgentState) -> float:
    trust = agent._trust
    return (trust if trust > 0.0 else 0.0) / (1.0 + agent._in_flight / agent._concurrency)


class _WeightIndex:
    """A Fenwick tree of trust / (1 + load) over the pool's slots (0 for inactive ones).

    O(log n) per change and per draw. ``_positive`` counts active agents with a
    positive weight exactly, so "all weights are zero" never depends on float
    sums; the tree is rebuilt from its exact leaves every n + 4 * INDEX_SLACK changes (O(1)
    amortized) so its float sums cannot drift."""

    __slots__ = ("_changes", "_pool", "_positive", "_tree")
    watches_trust = True
    watches_load_rise = True

    def __init__(self, pool: ActivePool) -> None:
        self._pool = pool
        self._tree = Fenwick()
        self._positive = 0
        self._changes = 0
        self.rebuild()

    def rebuild(self) -> None:
        """O(n)."""
        weights = [0.0] * self._pool.slot_count
        for slot, agent in self._pool.active_slots():
            weights[slot] = _weight(agent)
        self._tree.rebuild(weights)
        self._positive = sum(1 for w in weights if w > 0.0)
        self._changes = 0

    def _set(self, slot: int, weight: float) -> None:
        tree = self._tree
        while len(tree) <= slot:
            tree.append(0.0)
        old = tree.value(slot)
        self._positive += (weight > 0.0) - (old > 0.0)
        tree.set(slot, weight)
        self._changes += 1
        if self._changes > len(tree) + 4 * INDEX_SLACK:
            self.rebuild()

    def activated(self, slot: int, agent: AgentState) -> None:
        self._set(slot, _weight(agent))

    def deactivated(self, slot: int, agent: AgentState) -> None:
        self._set(slot, 0.0)

    def changed(self, slot: int, agent: AgentState) -> None:
        self._set(slot, _weight(agent))

    def draw(self, rng: random.Random, excluded: Collection[int], n: int, ranks: list[int]) -> AgentState:
        """An eligible agent with probability proportional to its weight (uniform if all are 0)."""
        pool, tree = self._pool, self._tree
        saved: list[tuple[int, float]] = []
        positive = self._positive
        for slot in excluded:
            if tree.value(slot) > 0.0:
                positive -= 1
            tree.set_saving(slot, 0.0, saved)
        try:
            if positive <= 0:
                return pool.nth(int(rng.random() * n), ranks)
            slot = tree.find(rng.random() * tree.total())
            if slot >= len(tree) or tree.value(slot) <= 0.0:  # x rounded onto the very end
                return pool.nth(n - 1, ranks)
            return pool.agent_at(slot)
        finally:
            tree.restore(saved)


class TrustWeighted:
    """Probability proportional to trust / (1 + load).

    Drawn by rejection sampling (exact, O(1) expected when weights are not tiny),
    with an exact O(log n) draw from a Fenwick tree of the weights (``_WeightIndex``)
    after ``_REJECTION_TRIES`` misses.
    """

    name = "trust_weighted"

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        ranks = candidates.excluded_ranks(exclude) if exclude else NO_RANKS
        n = len(candidates) - len(ranks)
        if n <= 1:
            return candidates.nth(0, ranks) if n == 1 else None
        # Weights are at most 1 (trust <= 1, load >= 0), so accept with probability w.
        rand = rng.random
        for _ in range(_REJECTION_TRIES):
            a = candidates.nth(int(rand() * n), ranks)
            if rand() * (1.0 + a._in_flight / a._concurrency) < a._trust:
                return a
        index = candidates.index_for(self, _WeightIndex)
        return index.draw(rng, candidates.excluded_slots(exclude) if exclude else (), n, ranks)


class LatencyEwma:
    """Peak-EWMA latency × (in-flight + 1), compared between two random agents (as Finagle and Linkerd do).

    An agent with no latency sample yet costs 0, so new agents get tried first.
    """

    name = "latency_ewma"

    def choose(self, method: str, candidates: ActivePool, rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        ranks = candidates.excluded_ranks(exclude) if exclude else NO_RANKS
        n = len(candidates) - len(ranks)
        if n <= 1:
            return candidates.nth(0, ranks) if n == 1 else None
        a, b = _two(candidates, n, ranks, rng)
        cost_a = a._latency * (a._in_flight + 1) / a._concurrency  # latency_ewma
        cost_b = b._latency * (b._in_flight + 1) / b._concurrency
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


for _cls in (RoundRobin, UniformRandom, LeastLoaded, PowerOfTwo, TrustWeighted, LatencyEwma):
    register(_cls.name, _cls)
