"""Keeping a fleet's connections honest cheaply: who pings whom, and how many agents of one process connect at once."""

from __future__ import annotations

import asyncio

import pytest
from live_helpers import run, serving

from aicp.live.client import AICPWebSocketClient
from aicp.live.controller import AICPController
from aicp.live.handlers import echo
from aicp.router import RouterConfig
from aicp.signing import Identity

pytestmark = pytest.mark.live


def test_the_router_pings_controllers_but_not_agents_which_ping_it_once_per_lease() -> None:
    async def main() -> None:
        async with serving(router_config=RouterConfig(heartbeat_s=1.0, lease_s=3.0)) as server:
            agent = AICPWebSocketClient(server.url, "a1", Identity.generate())
            agent.register_handler("echo", echo)
            quick = AICPWebSocketClient(server.url, "a2", Identity.generate(), ping_interval_s=0.1)
            silent = AICPWebSocketClient(server.url, "a3", Identity.generate(), ping_interval_s=0)
            async with AICPController(server.url, "c1") as ctl:
                for c in (agent, quick, silent):
                    await c.connect()
                try:
                    by_peer = {server.proto.peer_of(conn): link.ws for conn, link in server._links.items() if hasattr(link, "ws")}
                    assert set(by_peer) == {"a1", "a2", "a3", "c1"}
                    # the router's side: an agent's lease proves it alive, a controller has none
                    assert by_peer["c1"].keepalive_task is not None
                    assert all(by_peer[a].keepalive_task is None for a in ("a1", "a2", "a3"))
                    # the agents' side: they check on the router, by default once per lease
                    assert agent.ws is not None and agent.ws.ping_interval == 3.0 and agent.ws.keepalive_task is not None
                    assert silent.ws is not None and silent.ws.keepalive_task is None
                    assert ctl.ws is not None and ctl.ws.keepalive_task is not None
                    # a ping goes out and its pong comes back (websockets measures the round trip)
                    for _ in range(100):
                        if quick.ws is not None and quick.ws.latency > 0:
                            break
                        await asyncio.sleep(0.02)
                    assert quick.ws is not None and quick.ws.latency > 0
                finally:
                    for c in (agent, quick, silent):
                        await c.close()

    run(main())


class _CountingGate(asyncio.Semaphore):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.held = self.peak = self.entered = 0

    async def acquire(self) -> bool:
        await super().acquire()
        self.held += 1
        self.entered += 1
        self.peak = max(self.peak, self.held)
        return True

    def release(self) -> None:
        self.held -= 1
        super().release()


def test_agents_sharing_a_connect_gate_register_a_bounded_number_at_a_time() -> None:
    async def main() -> None:
        async with serving() as server:
            gate = _CountingGate(2)
            clients = [AICPWebSocketClient(server.url, f"g{i}", Identity.generate(), connect_gate=gate) for i in range(6)]
            try:
                await asyncio.gather(*(c.connect() for c in clients))
                assert all(c.connected for c in clients) and server.router.agents_by_status()["active"] == 6
                assert gate.entered == 6 and gate.peak == 2 and gate.held == 0
            finally:
                for c in clients:
                    await c.close()

    run(main())
