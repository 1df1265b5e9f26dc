"""Who is connected, what they can do, and how well they have done it.

The registry holds one ``AgentState`` per agent id and, per capability, an
``ActivePool``: the agents with that capability in the order they joined it, with
an index that finds the k-th *active* one in O(log n) (O(1) while every member
is active). Nothing is copied or rebuilt when an agent registers, changes status
or leaves, so n registrations cost O(n log n), not O(n²).

Costs (n = agents with the capability, c = capabilities of the agent):

- ``Registry.add``, ``remove``, ``set_status``, ``set_capabilities``: O(c log n)
  amortized (a pool compacts its slots, O(n), after O(n) departures).
- ``Registry.agents_with``: O(1), a live view, not a copy.
- ``Registry.count_with``, ``count_by_status``: O(1) / O(statuses).
- ``ActivePool`` ``len``: O(1); ``pool[k]``, ``nth``: O(log n); ``excluded_ranks``: O(m log n) for m ids.

Load-aware strategies attach their own per-pool index (``ActivePool.index_for``); the
pool tells every attached index when an agent becomes active or inactive, and
``AgentState`` tells the registry whenever ``in_flight``, ``concurrency`` or
``trust`` is assigned, so no caller can forget to. (Until a strategy attaches its
first index, agents do not report, so round-robin and the random strategies pay
nothing for this; trust changes are reported only once an index watches trust,
and rises through ``add_in_flight`` only once an index watches rises.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from enum import StrEnum
from typing import Any, Protocol, TypeVar, overload

from aicp import errors
from aicp.fenwick import Fenwick


class Status(StrEnum):
    ACTIVE = "active"
    SUSPECT = "suspect"  # held out after failures or flapping; comes back by itself
    DRAINING = "draining"  # finishing its work, takes no new tasks
    DEAD = "dead"  # lease ran out or connection lost


class AgentState:
    """Everything the router knows about one agent. Mutated only by ``Registry`` and ``Router``.

    ``in_flight``, ``concurrency`` and ``trust`` are properties: assigning one tells
    the registry (O(c) plus the attached indexes' cost), which keeps the strategies'
    indexes exact whoever changes them.

    Layout: CPython lays slots out in the sorted order of their names, so the fields a
    strategy reads of a candidate (``_concurrency``, ``_in_flight``, ``_latency`` behind
    ``latency_ewma``, ``_trust``) sit side by side, 32 bytes near the object's start (one
    cache line, two when the object's start falls late in a line); with 100,000 agents a
    candidate is rarely in cache, and each further line is one more miss.
    """

    __slots__ = (
        "_concurrency",
        "_in_flight",
        "_latency",
        "_trust",
        "_watch",
        "_watch_rise",
        "_watch_trust",
        "agent_id",
        "bad_signatures",
        "capabilities",
        "consecutive_failures",
        "died_at",
        "dispatched",
        "epoch",
        "failed",
        "flaps",
        "holdout_until",
        "last_seen",
        "lease_expiry",
        "reported_load",
        "status",
        "succeeded",
        "success_rate",
        "tasks",
        "timed_out",
    )

    def __init__(self, agent_id: str, capabilities: Iterable[str], concurrency: int, trust: float, now: float, lease_s: float) -> None:
        self._watch: Registry | None = None  # told of load changes once some pool has an index
        self._watch_rise = False  # add_in_flight reports rises too once some pool has an index that watches them
        self._watch_trust: Registry | None = None  # told of trust changes once some pool has a trust index
        self.agent_id = agent_id
        self.capabilities: tuple[str, ...] = tuple(dict.fromkeys(capabilities))
        self._concurrency = max(1, concurrency)
        self.status = Status.ACTIVE
        self.lease_expiry = now + lease_s
        self.last_seen = now
        self._in_flight = 0
        self._latency = 0.0  # latency_ewma
        self.success_rate = 1.0
        self._trust = trust
        self.dispatched = 0
        self.succeeded = 0
        self.failed = 0
        self.timed_out = 0
        self.bad_signatures = 0
        self.consecutive_failures = 0
        self.flaps = 0
        self.died_at: float | None = None
        self.holdout_until = 0.0
        self.reported_load = 0
        self.epoch = 0  # bumped on every (re)registration, so stale timers can tell
        #: The router's tasks on this agent by task id (``None`` until its first dispatch), kept
        #: here rather than in a dict by agent id: the router reaches it from the agent it already
        #: holds, with no lookup in a table of every agent. Owned by ``Router``.
        self.tasks: dict[str, Any] | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        if self._watch is not None:
            self._watch.load_changed(self)

    def add_in_flight(self, delta: int) -> None:
        """``in_flight += delta`` in one call (the router's hot path). Tells the registry of a fall,
        and of a rise only once some index watches rises (``PoolIndex.watches_load_rise``)."""
        self._in_flight += delta
        if self._watch is not None and (delta < 0 or self._watch_rise):
            self._watch.load_changed(self)

    @property
    def latency_ewma(self) -> float:
        """Seconds, peak-sensitive; 0.0 = no sample yet."""
        return self._latency

    @latency_ewma.setter
    def latency_ewma(self, value: float) -> None:
        self._latency = value

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self._concurrency = value
        if self._watch is not None:
            self._watch.load_changed(self)

    @property
    def trust(self) -> float:
        return self._trust

    @trust.setter
    def trust(self, value: float) -> None:
        self._trust = value
        if self._watch_trust is not None:
            self._watch_trust.trust_changed(self)

    @property
    def load(self) -> float:
        """In-flight tasks per unit of concurrency: what load-aware strategies compare."""
        return self._in_flight / self._concurrency

    def snapshot(self) -> dict[str, object]:
        return {
            "agent_id": self.agent_id,
            "capabilities": list(self.capabilities),
            "concurrency": self.concurrency,
            "status": self.status.value,
            "in_flight": self.in_flight,
            "latency_ewma_ms": round(self.latency_ewma * 1000.0, 4),
            "success_rate": round(self.success_rate, 6),
            "trust": round(self.trust, 6),
            "dispatched": self.dispatched,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "bad_signatures": self.bad_signatures,
            "flaps": self.flaps,
        }

    def __repr__(self) -> str:
        return f"AgentState({self.agent_id!r}, {self.status.value}, in_flight={self.in_flight}, trust={self.trust:.3f})"


class PoolIndex(Protocol):
    """A strategy's own index over one ``ActivePool`` (see ``ActivePool.index_for``).

    Slots are the pool's positions in join order; an index only holds active agents.
    ``changed`` is called on load changes (``in_flight``, ``concurrency``) and, if
    ``watches_trust``, on trust changes too."""

    watches_trust: bool
    #: False: ``changed`` is needed only when a load falls (or is assigned), not when
    #: ``add_in_flight`` raises it; the index reads loads from the agents.
    watches_load_rise: bool

    def activated(self, slot: int, agent: AgentState) -> None:
        """``agent`` (at ``slot``) became active or joined as active."""

    def deactivated(self, slot: int, agent: AgentState) -> None:
        """``agent`` stopped being active or left the pool."""

    def changed(self, slot: int, agent: AgentState) -> None:
        """An active agent's ``in_flight`` or ``concurrency`` (or ``trust``, see above) was assigned."""

    def rebuild(self) -> None:
        """The pool renumbered its slots (compaction): start again from the pool."""


_I = TypeVar("_I", bound=PoolIndex)

#: Holes a pool tolerates beyond one per member before it compacts its slots (tests set 0 to compact often).
COMPACT_SLACK = 32
#: The ranks of no excluded agent (shared: never mutate).
NO_RANKS: list[int] = []


class ActivePool(Sequence[AgentState]):
    """The agents with one capability in join order; as a ``Sequence``, only the active ones.

    Members keep the slot they got when they joined (registration, or a change of
    capabilities, moves an agent to the end, as the old rebuilt list did). A
    Fenwick tree of 0/1 flags over the slots gives the rank of an active agent
    and the active agent of a given rank. Departures leave holes; when holes
    outnumber members, the slots are compacted (O(n), amortized O(1)).

    Costs: ``len`` O(1); ``pool[k]`` and ``nth`` O(log n), O(1) while every slot
    holds an active agent; ``join``, ``leave``, ``status_changed`` O(log n)
    amortized plus each attached index's cost; iteration O(n).
    """

    __slots__ = ("_active", "_by_status", "_indexes", "_n_active", "_on_first_index", "_slot_of", "_slots", "_trust_indexes", "capability")

    def __init__(self, capability: str, on_first_index: Callable[[bool, bool], None] | None = None) -> None:
        self.capability = capability
        self._on_first_index = on_first_index
        self._slots: list[AgentState | None] = []
        self._slot_of: dict[str, int] = {}
        self._active = Fenwick()
        self._n_active = 0
        self._by_status: dict[Status, int] = dict.fromkeys(Status, 0)
        self._indexes: dict[object, PoolIndex] = {}
        self._trust_indexes: list[PoolIndex] = []  # those of _indexes that watch trust

    # ---------------------------------------------------------------- Sequence
    def __len__(self) -> int:
        return self._n_active

    @overload
    def __getitem__(self, k: int) -> AgentState: ...
    @overload
    def __getitem__(self, k: slice) -> Sequence[AgentState]: ...
    def __getitem__(self, k: int | slice) -> AgentState | Sequence[AgentState]:
        if isinstance(k, slice):
            return list(self)[k]
        n = self._n_active
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError("pool index out of range")
        return self._slots[self._select(k)]  # type: ignore[return-value]

    def __iter__(self) -> Iterator[AgentState]:
        """The active agents in join order, O(n)."""
        for agent in self._slots:
            if agent is not None and agent.status is Status.ACTIVE:
                yield agent

    def __repr__(self) -> str:
        return f"ActivePool({self.capability!r}, active={self._n_active}, members={len(self._slot_of)})"

    # ---------------------------------------------------------------- ranks
    def _select(self, k: int) -> int:
        """The slot of the active agent of rank ``k``."""
        if self._n_active == len(self._slots):
            return k
        return self._active.find(k)

    def rank(self, slot: int) -> int:
        """How many active agents come before ``slot``, O(log n)."""
        if self._n_active == len(self._slots):
            return slot
        return int(self._active.prefix(slot))

    def excluded_ranks(self, exclude: Collection[str]) -> list[int]:
        """The sorted ranks of the active agents named in ``exclude``, O(m log n)."""
        if not exclude:
            return NO_RANKS
        slot_of, active = self._slot_of, self._active
        ranks = []
        for agent_id in set(exclude):
            slot = slot_of.get(agent_id)
            if slot is not None and active.value(slot):
                ranks.append(self.rank(slot))
        ranks.sort()
        return ranks

    def excluded_slots(self, exclude: Collection[str]) -> set[int]:
        """The slots of the active agents named in ``exclude``, O(m)."""
        slot_of, active = self._slot_of, self._active
        return {s for s in (slot_of.get(a) for a in exclude) if s is not None and active.value(s)}

    def nth(self, k: int, excluded_ranks: list[int]) -> AgentState:
        """The ``k``-th active agent once those at ``excluded_ranks`` are left out, O((m + 1) log n)."""
        for r in excluded_ranks:
            if r <= k:
                k += 1
            else:
                break
        if self._n_active == len(self._slots):  # _select(k), inlined: every slot active
            return self._slots[k]  # type: ignore[return-value]
        return self._slots[self._active.find(k)]  # type: ignore[return-value]

    # ---------------------------------------------------------------- slots
    def slot_of(self, agent_id: str) -> int | None:
        return self._slot_of.get(agent_id)

    def agent_at(self, slot: int) -> AgentState:
        agent = self._slots[slot]
        assert agent is not None
        return agent

    def active_slots(self) -> Iterator[tuple[int, AgentState]]:
        """(slot, agent) of every active agent, in order, O(n): what an index builds from."""
        for slot, agent in enumerate(self._slots):
            if agent is not None and agent.status is Status.ACTIVE:
                yield slot, agent

    @property
    def slot_count(self) -> int:
        """One more than the highest slot in use (holes included)."""
        return len(self._slots)

    def count(self, status: Status | None = None) -> int:
        """Members, or members with ``status``, O(1)."""
        return len(self._slot_of) if status is None else self._by_status[status]

    def index_for(self, key: object, factory: Callable[[ActivePool], _I]) -> _I:
        """The index ``key`` keeps on this pool, built by ``factory(pool)`` (O(n)) on first use.

        From then on the pool keeps it up to date (see ``PoolIndex``)."""
        idx = self._indexes.get(key)
        if idx is None:
            idx = self._indexes[key] = factory(self)
            if idx.watches_trust:
                self._trust_indexes.append(idx)
            if self._on_first_index is not None:
                self._on_first_index(idx.watches_trust, idx.watches_load_rise)
        return idx  # type: ignore[return-value]

    # ---------------------------------------------------------------- changes (Registry only)
    def join(self, agent: AgentState) -> None:
        slot = len(self._slots)
        self._slots.append(agent)
        self._slot_of[agent.agent_id] = slot
        self._by_status[agent.status] += 1
        active = agent.status is Status.ACTIVE
        self._active.append(1 if active else 0)
        if active:
            self._n_active += 1
            for idx in self._indexes.values():
                idx.activated(slot, agent)

    def leave(self, agent: AgentState) -> None:
        slot = self._slot_of.pop(agent.agent_id)
        self._slots[slot] = None
        self._by_status[agent.status] -= 1
        if self._active.value(slot):
            self._active.set(slot, 0)
            self._n_active -= 1
            for idx in self._indexes.values():
                idx.deactivated(slot, agent)
        if len(self._slots) > 2 * len(self._slot_of) + COMPACT_SLACK:
            self._compact()

    def status_changed(self, agent: AgentState, old: Status) -> None:
        self._by_status[old] -= 1
        self._by_status[agent.status] += 1
        was, now = old is Status.ACTIVE, agent.status is Status.ACTIVE
        if was is now:
            return
        slot = self._slot_of[agent.agent_id]
        self._active.set(slot, 1 if now else 0)
        if now:
            self._n_active += 1
            for idx in self._indexes.values():
                idx.activated(slot, agent)
        else:
            self._n_active -= 1
            for idx in self._indexes.values():
                idx.deactivated(slot, agent)

    def _compact(self) -> None:
        """Drop the holes left by departures: O(n), after more departures than there are members."""
        members = [a for a in self._slots if a is not None]
        self._slots = list(members)
        self._slot_of = {a.agent_id: i for i, a in enumerate(members)}
        self._active.rebuild(1 if a.status is Status.ACTIVE else 0 for a in members)
        for idx in self._indexes.values():
            idx.rebuild()


_EMPTY_POOL = ActivePool("")


class Registry:
    """Agents by id, and per capability an ``ActivePool`` (costs: see the module docstring)."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentState] = {}
        self._pools: dict[str, ActivePool] = {}
        self._by_status: dict[Status, int] = dict.fromkeys(Status, 0)
        self._watching = False  # agents report load changes only once some pool has an index
        self._watching_trust = False  # and trust changes only once some pool has an index that watches trust
        self._watching_rise = False  # and rises of load only once some pool has an index that watches them

    def __len__(self) -> int:
        return len(self.agents)

    def get(self, agent_id: str) -> AgentState | None:
        return self.agents.get(agent_id)

    def add(self, state: AgentState) -> None:
        """Insert a new agent, O(c log n) amortized."""
        old = self.agents.get(state.agent_id)
        if old is not None:
            if old is state:
                return
            raise errors.LocalError(f"agent {state.agent_id!r} is already registered; update it instead")
        self.agents[state.agent_id] = state
        self._by_status[state.status] += 1
        self._join(state)
        if self._watching:
            state._watch = self
        if self._watching_trust:
            state._watch_trust = self
        state._watch_rise = self._watching_rise

    def set_capabilities(self, state: AgentState, capabilities: Iterable[str]) -> None:
        """Replace an agent's capabilities; it moves to the end of each pool, O(c log n)."""
        self._leave(state)
        state.capabilities = tuple(dict.fromkeys(capabilities))
        self._join(state)

    def set_status(self, state: AgentState, status: Status) -> None:
        """O(c log n)."""
        old = state.status
        if old is status:
            return
        state.status = status
        self._by_status[old] -= 1
        self._by_status[status] += 1
        pools = self._pools
        for cap in state.capabilities:
            pools[cap].status_changed(state, old)

    def remove(self, agent_id: str) -> AgentState | None:
        """Forget an agent entirely (its statistics go with it), O(c log n) amortized."""
        state = self.agents.pop(agent_id, None)
        if state is None:
            return None
        state._watch = state._watch_trust = None
        state._watch_rise = False
        self._by_status[state.status] -= 1
        self._leave(state)
        return state

    def load_changed(self, state: AgentState) -> None:
        """Called by ``AgentState`` when its ``in_flight`` or ``concurrency`` is assigned:
        O(c) plus the indexes' cost. Written flat: it runs on every dispatch and result."""
        if state.status is Status.ACTIVE:
            pools = self._pools
            agent_id = state.agent_id
            for cap in state.capabilities:
                pool = pools[cap]
                indexes = pool._indexes
                if indexes:
                    slot = pool._slot_of[agent_id]
                    for idx in indexes.values():
                        idx.changed(slot, state)

    def trust_changed(self, state: AgentState) -> None:
        """Called by ``AgentState`` when its ``trust`` is assigned (only once some index watches
        trust): O(c) plus the trust indexes' cost."""
        if state.status is Status.ACTIVE:
            pools = self._pools
            for cap in state.capabilities:
                pool = pools[cap]
                indexes = pool._trust_indexes
                if indexes:
                    slot = pool._slot_of[state.agent_id]
                    for idx in indexes:
                        idx.changed(slot, state)

    def _watch_agents(self, trust: bool, rise: bool) -> None:
        """A strategy attached an index: from now on agents report load changes, rises too if
        the index watches them, and trust changes too if it watches trust (O(n), once each)."""
        if not self._watching:
            self._watching = True
            for state in self.agents.values():
                state._watch = self
        if rise and not self._watching_rise:
            self._watching_rise = True
            for state in self.agents.values():
                state._watch_rise = True
        if trust and not self._watching_trust:
            self._watching_trust = True
            for state in self.agents.values():
                state._watch_trust = self

    def agents_with(self, capability: str) -> ActivePool:
        """Active agents that have ``capability``, in join order: a live view, O(1). Do not mutate."""
        return self._pools.get(capability, _EMPTY_POOL)

    def all_with(self, capability: str) -> list[AgentState]:
        """Every known agent with ``capability``, whatever its status: a copy, O(n)."""
        pool = self._pools.get(capability)
        return [a for a in pool._slots if a is not None] if pool is not None else []

    def count_with(self, capability: str, status: Status | None = None) -> int:
        """Agents with ``capability`` (and ``status``, when given), O(1)."""
        pool = self._pools.get(capability)
        return pool.count(status) if pool is not None else 0

    def capabilities(self) -> list[str]:
        return sorted(self._pools)

    def count_by_status(self) -> dict[str, int]:
        """O(1) (four statuses)."""
        return {s.value: n for s, n in self._by_status.items()}

    def snapshot(self) -> list[dict[str, object]]:
        return [state.snapshot() for state in self.agents.values()]

    def _join(self, state: AgentState) -> None:
        pools = self._pools
        for cap in state.capabilities:
            pool = pools.get(cap)
            if pool is None:
                pool = pools[cap] = ActivePool(cap, self._watch_agents)
            pool.join(state)

    def _leave(self, state: AgentState) -> None:
        pools = self._pools
        for cap in state.capabilities:
            pool = pools[cap]
            pool.leave(state)
            if not pool.count():
                del pools[cap]  # its strategy indexes go with it
