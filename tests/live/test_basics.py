"""The original design's five tests, on real sockets: startup, registration, routing, heartbeat, full pipeline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from live_helpers import agent, http_get, http_json, run, serving, wait_until
from websockets.asyncio.client import connect

import aicp.peer
import aicp.protocol
import aicp.signing
from aicp import errors
from aicp.live.controller import AICPController
from aicp.live.handlers import text_classify
from aicp.messages import Challenge
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_LEASE_EXPIRED, ProtocolConfig
from aicp.registry import Status
from aicp.router import RouterConfig
from aicp.signing import Identity

pytestmark = pytest.mark.live


def test_server_startup() -> None:
    async def main() -> None:
        async with serving() as server:
            assert server.port != 0 and server.url == f"ws://127.0.0.1:{server.port}"
            status, ctype, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/healthz")
            assert status == 200 and ctype == "application/json" and b'"ok"' in body
            # The first frame on a WebSocket is a challenge signed by the router's key.
            async with connect(server.url) as ws:
                session = PeerSession(Identity.generate(), "probe", router_key=server.router_key)
                rec = session.receive(await ws.recv(decode=False), time.time())
                assert isinstance(rec.body, Challenge) and rec.key == server.router_key

    run(main())


def test_agent_registration_is_signed_and_acknowledged() -> None:
    async def main() -> None:
        async with serving() as server, agent(server.url, "labelee", {"text.classify": text_classify}) as client:
            assert client.registrations == 1 and client.connected
            assert client.session.router_key == server.router_key
            state = server.router.registry.get("labelee")
            assert state is not None and state.status is Status.ACTIVE and state.capabilities == ("text.classify",)
            listed = await asyncio.to_thread(http_json, f"http://127.0.0.1:{server.port}/agents")
            assert [a["agent_id"] for a in listed["agents"]] == ["labelee"] and listed["agents"][0]["connected"] is True

    run(main())


def _whoami(name: str) -> Any:
    return lambda payload: {"agent": name, "echo": payload}


def test_routing_by_capability_across_agents() -> None:
    async def main() -> None:
        async with (
            serving() as server,
            agent(server.url, "echo-1", {"echo": _whoami("echo-1")}),
            agent(server.url, "echo-2", {"echo": _whoami("echo-2")}),
            agent(server.url, "classifier", {"text.classify": text_classify, "other": _whoami("classifier")}),
            AICPController(server.url, "ctl") as ctl,
        ):
            results = await asyncio.gather(*(ctl.submit("echo", i, timeout=5) for i in range(20)))
            by_agent = [r["agent"] for r in results]
            assert set(by_agent) == {"echo-1", "echo-2"}  # never the agent without the capability
            assert by_agent.count("echo-1") == by_agent.count("echo-2") == 10  # round robin
            assert [r["echo"] for r in results] == list(range(20))
            label = await ctl.submit("text.classify", {"text": "awful, it broke and support was rude"}, timeout=5)
            assert label["label"] == "negative"
            with pytest.raises(errors.TaskError) as info:
                await ctl.submit("image.label", {}, timeout=5)
            assert info.value.code == errors.NO_AGENT

    run(main())


def test_heartbeats_keep_an_agent_and_a_silent_one_is_evicted() -> None:
    async def main() -> None:
        rcfg = RouterConfig(heartbeat_s=0.1, lease_s=0.5)
        async with serving(router_config=rcfg) as server:
            async with (
                agent(server.url, "beating", {"echo": _whoami("beating")}, heartbeat=0.1),
                agent(server.url, "silent", {"echo": _whoami("silent")}, reconnect=False) as silent,
            ):
                ws = silent.ws
                assert ws is not None
                await asyncio.sleep(1.2)  # more than two leases
                beating = server.router.registry.get("beating")
                gone = server.router.registry.get("silent")
                assert beating is not None and beating.status is Status.ACTIVE
                assert gone is not None and gone.status is Status.DEAD
                await wait_until(lambda: ws.close_code is not None, what="the silent agent's socket to close")
                assert ws.close_code == CLOSE_LEASE_EXPIRED
                assert server.proto.conn_of("silent") is None and server.proto.conn_of("beating") is not None

    run(main())


def test_full_pipeline_verifies_every_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """Controller -> router -> agent -> router -> controller; each hop checks the sender's signature."""
    checked: list[tuple[str, bytes]] = []
    real_verify = aicp.signing.verify

    def spy(where: str) -> Any:
        def verify(public_key: bytes, body: bytes, signature: bytes) -> None:
            checked.append((where, public_key))
            real_verify(public_key, body, signature)

        return verify

    monkeypatch.setattr(aicp.peer, "verify", spy("peer"))
    monkeypatch.setattr(aicp.protocol, "verify", spy("router"))

    async def main() -> None:
        async with (
            serving(protocol_config=ProtocolConfig(verify="every-hop")) as server,
            agent(server.url, "labelee", {"text.classify": text_classify}) as labelee,
            AICPController(server.url, "ains") as ctl,
        ):
            checked.clear()
            result = await ctl.submit("text.classify", {"text": "great service, I love it"}, timeout=5)
            assert result["label"] == "positive"
            agent_key, ctl_key = labelee.identity.public_key, ctl.identity.public_key
            # router checked the task (controller key) and the result (agent key); the agent checked the
            # task against the controller's key; the controller checked the result against the agent's key.
            assert checked.count(("router", ctl_key)) == 1
            assert checked.count(("router", agent_key)) == 1
            assert checked.count(("peer", ctl_key)) == 1
            assert checked.count(("peer", agent_key)) == 1

    run(main())
