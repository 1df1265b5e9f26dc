"""Routers of one cluster wired in memory, with a hand-stepped clock: each an ``InProcessHub`` plus a ``ClusterNode``.

The bus between routers is a FIFO; ``crash`` silences a router (its peers and its
bus traffic stop), ``cut`` partitions it from the bus (its peers still work).
"""

from __future__ import annotations

import random
from collections import deque

from aicp.cluster import ClusterConfig, ClusterNode, ClusterOutput, Publish
from aicp.inprocess import Endpoint, InProcessHub, TaskHandler
from aicp.peer import PeerSession
from aicp.protocol import Close, Forward, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity


class ClusterHarness:
    def __init__(
        self,
        names: list[str],
        strategy: str = "least_loaded",
        now: float = 1_000_000.0,
        router_config: RouterConfig | None = None,
        cluster_config: ClusterConfig | None = None,
        seeds: dict[str, int] | None = None,
    ) -> None:
        self.now = now
        self.hubs: dict[str, InProcessHub] = {}
        self.nodes: dict[str, ClusterNode] = {}
        for name in names:
            rng = random.Random(seeds[name] if seeds is not None else 0)
            proto = RouterProtocol(Identity.generate(), Router(router_config or RouterConfig(), strategy, rng), ProtocolConfig(router_id=name))
            self.hubs[name] = InProcessHub(proto, now)
            self.nodes[name] = ClusterNode(proto, cluster_config or ClusterConfig())
        self.bus: deque[tuple[str, str, Publish | Forward]] = deque()  # (from, to, message)
        self.crashed: set[str] = set()
        self.cut: set[str] = set()
        self.bus_messages = 0
        for name in names:
            self.apply(name, self.nodes[name].start(now))

    # ------------------------------------------------------------------ peers
    def connect(self, router: str, session: PeerSession, handler: TaskHandler | None = None, auto: bool = True) -> Endpoint:
        ep = self.hubs[router].connect(session, handler, auto)
        self.pump()
        return ep

    def agent(
        self,
        router: str,
        agent_id: str,
        methods: list[str],
        handler: TaskHandler | None = None,
        auto: bool = True,
        concurrency: int = 1,
    ) -> Endpoint:
        return self.connect(
            router,
            PeerSession(Identity.generate(), agent_id, "agent", methods, concurrency),
            handler or (lambda t: {"by": agent_id}),
            auto,
        )

    def controller(self, router: str, controller_id: str = "c1", identity: Identity | None = None) -> Endpoint:
        return self.connect(router, PeerSession(identity or Identity.generate(), controller_id, "controller"))

    # ------------------------------------------------------------------ faults
    def crash(self, router: str) -> None:
        """The router stops: nothing in or out any more (its peers' frames are dropped)."""
        self.crashed.add(router)

    # ------------------------------------------------------------------ the loop
    def apply(self, name: str, outs: list[ClusterOutput]) -> None:
        hub = self.hubs[name]
        for out in outs:
            if isinstance(out, (Send, Close)):
                hub._apply([out])
            elif isinstance(out, Publish):
                for other in self.hubs:
                    if other != name:
                        self.bus.append((name, other, out))
            else:
                self.bus.append((name, out.router, out))

    def pump(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            busy = False
            for name, hub in self.hubs.items():
                if name in self.crashed:
                    hub._queue.clear()
                    continue
                hub.now = self.now
                if hub._queue:
                    busy = True
                    hub.run_until_idle()
                self.apply(name, self.nodes[name].flush())
            if self.bus:
                busy = True
                src, dst, msg = self.bus.popleft()
                if src in self.crashed or dst in self.crashed or src in self.cut or dst in self.cut:
                    continue
                self.bus_messages += 1
                node = self.nodes[dst]
                if isinstance(msg, Publish):
                    self.apply(dst, node.summary_received(msg.data, self.now))
                elif msg.kind == "task":
                    self.apply(dst, node.task_received(src, msg.data, msg.timeout_s, self.now, msg.key, msg.method, msg.fingerprint))
                else:
                    self.apply(dst, node.outcome_received(src, msg.key, msg.data, self.now, msg.ok))
            if not busy:
                return
        raise RuntimeError("cluster did not go idle")

    def advance(self, dt: float) -> None:
        """Move time forward, firing every router's deadlines on the way."""
        target = self.now + dt
        self.pump()
        while True:
            due = [
                (d, n)
                for n, node in self.nodes.items()
                if n not in self.crashed and (d := node.next_deadline()) is not None and d <= target
            ]
            if not due:
                break
            when, name = min(due)
            self.now = max(self.now, when)
            self.hubs[name].now = self.now
            self.apply(name, self.nodes[name].on_timer(self.now))
            self.pump()
        self.now = target
        self.pump()
