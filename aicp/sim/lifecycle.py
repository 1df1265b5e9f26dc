"""Agents' connections to the router: heartbeats, crashes, partitions, reconnects.

What the router sees of an agent is its connection. A crash closes it, and the
router hears of it one hop later (``agent_lost``), unless the agent is cut off by a
partition, in which case only the lease can tell. When the router gives up on an
agent (``AgentDown``: lease expired) the connection is closed from its side: the
agent drops the work it had and registers again after ``network.reconnect_s``, or
as soon as its partition heals.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import simpy
from simpy.events import Timeout

from aicp.sim.agents import SimAgent

if TYPE_CHECKING:
    from aicp.sim.engine import Simulation


class Lifecycle:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.crashed: list[SimAgent] = []  # oldest first: ``recover`` with a count picks from the front
        self.partitioned_order: list[SimAgent] = []

    def start_heartbeats(self, mode: str, phases: list[float]) -> None:
        env = self.sim.env
        if mode == "aggregate":
            env.process(self.heartbeats_aggregate())
        else:
            for agent, phase in zip(self.sim.agents, phases):
                env.process(self.heartbeats_full(agent, phase))

    def heartbeats_aggregate(self) -> Generator[simpy.Event, None, None]:
        """One event per interval renews every reachable agent's lease (no per-agent process, no loss)."""
        env, router, part = self.sim.env, self.sim.router, self.sim.link.partitioned
        period = router.config.heartbeat_s
        while True:
            yield env.timeout(period)
            now = env.now
            for a in self.sim.agents:
                if a.up and a.connected and not a.hb_lost and a.index not in part:
                    router.heartbeat(a.agent_id, now, a.busy)

    def heartbeats_full(self, agent: SimAgent, phase: float) -> Generator[simpy.Event, None, None]:
        env = self.sim.env
        period = self.sim.router.config.heartbeat_s
        yield env.timeout(phase)
        while True:
            if agent.up and agent.connected and not agent.hb_lost:
                self.sim.link.send(agent.index, self._on_heartbeat, agent)
            yield env.timeout(period)

    def _on_heartbeat(self, agent: SimAgent) -> None:
        self.sim.router.heartbeat(agent.agent_id, self.sim.env.now, agent.busy)

    def crash(self, agent: SimAgent) -> None:
        if not agent.up:
            return
        agent.up = False
        agent.reset()
        self.crashed.append(agent)
        if agent.connected:
            agent.connected = False
            self.sim.link.control(agent.index, self._closed, (agent, agent.epoch))

    def recover(self, agent: SimAgent) -> None:
        if agent.up:
            return
        agent.up = True
        agent.reset()
        if agent in self.crashed:
            self.crashed.remove(agent)
        self.sim.link.control(agent.index, self._register, agent)

    def partition(self, agent: SimAgent) -> None:
        self.sim.link.partitioned.add(agent.index)
        self.partitioned_order.append(agent)

    def heal(self, agent: SimAgent) -> None:
        self.sim.link.partitioned.discard(agent.index)
        if agent in self.partitioned_order:
            self.partitioned_order.remove(agent)
        if agent.up and not agent.connected:
            self.sim.link.control(agent.index, self._register, agent)

    def _closed(self, message: tuple[SimAgent, int]) -> None:
        agent, epoch = message
        if agent.epoch != epoch:
            return  # it came back before the router saw it go
        self.sim.apply(self.sim.router.agent_lost(agent.agent_id, self.sim.env.now, "connection closed"))
        self.sim.rearm()

    def _register(self, agent: SimAgent) -> None:
        if not agent.up or agent.index in self.sim.link.partitioned:
            return
        agent.connected = True
        self.sim.router.register_agent(
            agent.agent_id, agent.capabilities, self.sim.env.now, concurrency=agent.concurrency, trust=agent.trust
        )
        self.sim.rearm()

    def agent_down(self, agent: SimAgent) -> None:
        """The router closed the agent's connection (lease expired): it drops its work and reconnects."""
        agent.connected = False
        agent.reset()
        if agent.up and agent.index not in self.sim.link.partitioned:
            Timeout(self.sim.env, self.sim.scenario.network.reconnect_s, agent).callbacks.append(self._reconnect)  # type: ignore[union-attr]

    def _reconnect(self, event: Timeout) -> None:
        agent: SimAgent = event._value
        if agent.up and not agent.connected:
            self.sim.link.control(agent.index, self._register, agent)
