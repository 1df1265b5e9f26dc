"""Agents' connections to the router: heartbeats, crashes, partitions, reconnects.

What the router sees of an agent is its connection. A crash closes it, and the
router hears of it one hop later (``agent_lost``), unless the agent is cut off by a
partition, in which case only the lease can tell. When the router gives up on an
agent (``AgentDown``: lease expired) the connection is closed from its side: the
agent drops the work it had and registers again after ``network.reconnect_s``, or
as soon as its partition heals.

The life cycle is wired to its named collaborators only: the environment, the
routing core (``LeaseRouter``: register, heartbeat, lose an agent), the ``Link``,
the agents, and a ``Driver`` that carries out the router's actions and re-arms the
clock. Crashed and partitioned agents are kept in insertion-ordered dicts, so a
crash, a recovery or a heal costs O(1) whatever the size of the fleet.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Protocol

import simpy
from simpy.events import Timeout

from aicp.router import Action, RouterConfig
from aicp.sim.agents import SimAgent
from aicp.sim.network import Link


class LeaseRouter(Protocol):
    """The routing core's calls about agents' connections (``aicp.router.Router`` has them)."""

    config: RouterConfig

    def register_agent(
        self, agent_id: str, capabilities: Iterable[str], now: float, concurrency: int = 1, trust: float | None = None
    ) -> list[Action]: ...

    def heartbeat(self, agent_id: str, now: float, load: int = 0) -> None: ...

    def agent_lost(self, agent_id: str, now: float, reason: str = "connection lost") -> list[Action]: ...


class Driver(Protocol):
    """The driver's side of a call into the router."""

    def apply(self, actions: list[Action], now: float | None = None) -> None:
        """Carry out the router's actions (``now``: the current time, when the caller has it at hand)."""
        ...

    def rearm(self) -> None:
        """The router's next deadline may have moved earlier: wake the clock if so."""
        ...


class Lifecycle:
    def __init__(
        self,
        env: simpy.Environment,
        router: LeaseRouter,
        link: Link,
        agents: Sequence[SimAgent],
        driver: Driver,
        reconnect_s: float,
    ) -> None:
        self.env = env
        self.router = router
        self.link = link
        self.agents = agents
        self.driver = driver
        self.reconnect_s = reconnect_s
        self.crashed: dict[SimAgent, None] = {}  # oldest first: ``recover`` with a count picks from the front
        self.partitioned_order: dict[SimAgent, None] = {}
        self.up_count = len(agents)  # agents whose process runs, kept as they crash and recover

    def start_heartbeats(self, mode: str, phases: list[float]) -> None:
        env = self.env
        if mode == "aggregate":
            env.process(self.heartbeats_aggregate())
        else:
            for agent, phase in zip(self.agents, phases):
                env.process(self.heartbeats_full(agent, phase))

    def heartbeats_aggregate(self) -> Generator[simpy.Event, None, None]:
        """One event per interval renews every reachable agent's lease (no per-agent process, no loss)."""
        env, router, part = self.env, self.router, self.link.partitioned
        period = router.config.heartbeat_s
        while True:
            yield env.timeout(period)
            now = env.now
            for a in self.agents:
                if a.up and a.connected and not a.hb_lost and a.index not in part:
                    router.heartbeat(a.agent_id, now, a.busy)

    def heartbeats_full(self, agent: SimAgent, phase: float) -> Generator[simpy.Event, None, None]:
        env = self.env
        period = self.router.config.heartbeat_s
        yield env.timeout(phase)
        while True:
            if agent.up and agent.connected and not agent.hb_lost:
                self.link.send(agent.index, self._on_heartbeat, agent)
            yield env.timeout(period)

    def _on_heartbeat(self, agent: SimAgent) -> None:
        self.router.heartbeat(agent.agent_id, self.env.now, agent.busy)

    def is_partitioned(self, agent: SimAgent) -> bool:
        return agent.index in self.link.partitioned

    def crash(self, agent: SimAgent) -> None:
        if not agent.up:
            return
        agent.up = False
        self.up_count -= 1
        agent.reset()
        self.crashed[agent] = None
        if agent.connected:
            agent.connected = False
            self.link.control(agent.index, self._closed, (agent, agent.epoch))

    def recover(self, agent: SimAgent) -> None:
        if agent.up:
            return
        agent.up = True
        self.up_count += 1
        agent.reset()
        self.crashed.pop(agent, None)
        self.link.control(agent.index, self._register, agent)

    def partition(self, agent: SimAgent) -> None:
        self.link.partitioned.add(agent.index)
        self.partitioned_order[agent] = None

    def heal(self, agent: SimAgent) -> None:
        self.link.partitioned.discard(agent.index)
        self.partitioned_order.pop(agent, None)
        if agent.up and not agent.connected:
            self.link.control(agent.index, self._register, agent)

    def _closed(self, message: tuple[SimAgent, int]) -> None:
        agent, epoch = message
        if agent.epoch != epoch:
            return  # it came back before the router saw it go
        self.driver.apply(self.router.agent_lost(agent.agent_id, self.env.now, "connection closed"))
        self.driver.rearm()

    def _register(self, agent: SimAgent) -> None:
        if not agent.up or agent.index in self.link.partitioned:
            return
        agent.connected = True
        self.driver.apply(
            self.router.register_agent(
                agent.agent_id, agent.capabilities, self.env.now, concurrency=agent.concurrency, trust=agent.trust
            )
        )
        self.driver.rearm()

    def agent_down(self, agent: SimAgent) -> None:
        """The router closed the agent's connection (lease expired): it drops its work and reconnects."""
        agent.connected = False
        agent.reset()
        if agent.up and agent.index not in self.link.partitioned:
            Timeout(self.env, self.reconnect_s, agent).callbacks.append(self._reconnect)  # type: ignore[union-attr]

    def _reconnect(self, event: Timeout) -> None:
        agent: SimAgent = event.value  # type: ignore[assignment]
        if agent.up and not agent.connected:
            self.link.control(agent.index, self._register, agent)
