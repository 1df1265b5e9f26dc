"""Who is connected, what they can do, and how well they have done it.

The registry holds one ``AgentState`` per agent id and, per capability, the list
of agents that may be chosen now (active ones). Lookups by capability are a
single dict access; the lists are rebuilt only when an agent's status or
capabilities change, which is rare next to routing decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from aicp import errors


class Status(StrEnum):
    ACTIVE = "active"
    SUSPECT = "suspect"  # held out after failures or flapping; comes back by itself
    DRAINING = "draining"  # finishing its work, takes no new tasks
    DEAD = "dead"  # lease ran out or connection lost


class AgentState:
    """Everything the router knows about one agent. Mutated only by ``Registry`` and ``Router``."""

    __slots__ = (
        "agent_id",
        "bad_signatures",
        "capabilities",
        "concurrency",
        "consecutive_failures",
        "died_at",
        "dispatched",
        "epoch",
        "failed",
        "flaps",
        "holdout_until",
        "in_flight",
        "last_seen",
        "latency_ewma",
        "lease_expiry",
        "remote",
        "reported_load",
        "status",
        "succeeded",
        "success_rate",
        "timed_out",
        "trust",
    )

    def __init__(self, agent_id: str, capabilities: Iterable[str], concurrency: int, trust: float, now: float, lease_s: float) -> None:
        self.agent_id = agent_id
        self.capabilities: tuple[str, ...] = tuple(dict.fromkeys(capabilities))
        self.concurrency = max(1, concurrency)
        self.status = Status.ACTIVE
        self.lease_expiry = now + lease_s
        self.last_seen = now
        self.in_flight = 0
        self.latency_ewma = 0.0  # seconds, peak-sensitive; 0.0 = no sample yet
        self.success_rate = 1.0
        self.trust = trust
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
        self.remote = False  # cluster mode: this "agent" is another router's capacity for one method (aicp.cluster)

    @property
    def load(self) -> float:
        """In-flight tasks per unit of concurrency: what load-aware strategies compare."""
        return self.in_flight / self.concurrency

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


_EMPTY: list[AgentState] = []


class Registry:
    """Agents by id, and the active ones by capability."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentState] = {}
        self._active_by_cap: dict[str, list[AgentState]] = {}
        self._local_by_cap: dict[str, list[AgentState]] = {}  # the same without remote candidates
        self._remote_seen = False  # no remote candidate yet: the local lists are the active lists themselves
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
        self._remote_seen = self._remote_seen or state.remote
        for cap in state.capabilities:
            self._members_by_cap.setdefault(cap, {})[state.agent_id] = state
        if old is not None or state.status is not Status.ACTIVE:
            self._rebuild(state.capabilities)
            return
        # A new active agent goes last, as a rebuild would put it: O(1) instead of O(agents),
        # so registering a fleet of n agents costs O(n), not O(n^2).
        for cap in state.capabilities:
            active = self._active_by_cap.get(cap)
            if active is None:
                self._rebuild((cap,))
                continue
            local = self._local_by_cap.get(cap)
            if state.remote and local is active:
                self._local_by_cap[cap] = local = list(active)  # the first remote candidate: the lists part
            active.append(state)
            if not state.remote and local is not active:
                if local is None:
                    self._local_by_cap[cap] = [state]
                else:
                    local.append(state)

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

    def local_agents_with(self, capability: str) -> list[AgentState]:
        """Like ``agents_with`` without remote candidates (cluster mode). O(1). Do not mutate."""
        return self._local_by_cap.get(capability, _EMPTY)

    def all_with(self, capability: str) -> list[AgentState]:
        """Every known agent with ``capability``, whatever its status."""
        return list(self._members_by_cap.get(capability, {}).values())

    def capabilities(self) -> list[str]:
        return sorted(self._members_by_cap)

    def count_by_status(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for state in self.agents.values():
            if not state.remote:  # another router's capacity is not an agent here
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
                local = [a for a in active if not a.remote] if self._remote_seen else active
                if len(local) == len(active):
                    self._local_by_cap[cap] = active
                elif local:
                    self._local_by_cap[cap] = local
                else:
                    self._local_by_cap.pop(cap, None)
            else:
                self._active_by_cap.pop(cap, None)
                self._local_by_cap.pop(cap, None)
