"""Protocol 1.1 on a real WebSocket server: binary frames, /agents keys, an old-version peer, not-assigned."""

from __future__ import annotations

import asyncio
import time

import pytest
from live_helpers import agent, challenged, error_and_close, http_json, run, serving
from msgspec import Raw
from websockets.exceptions import ConnectionClosed

from aicp import errors
from aicp.live.handlers import echo
from aicp.live.server import ServerLimits
from aicp.messages import PROTOCOL_VERSION, Error, Task, decode_frame, seal_raw
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_POLICY, CLOSE_UNSUPPORTED_DATA
from aicp.signing import Identity

pytestmark = pytest.mark.live


@pytest.mark.parametrize("verify_threads", [0, 2])
def test_a_binary_frame_closes_with_1003_and_agents_lists_bound_keys(verify_threads: int) -> None:
    async def main() -> None:
        async with serving(limits=ServerLimits(verify_threads=verify_threads)) as server, agent(server.url, "keyed", {"echo": echo}) as client:
            listed = await asyncio.to_thread(http_json, f"http://127.0.0.1:{server.port}/agents")
            assert listed["protocol"] == PROTOCOL_VERSION and listed["router_key"] == server.router_key
            [entry] = listed["agents"]
            assert entry["agent_id"] == "keyed" and entry["key"] == client.identity.public_key_text and entry["connected"] is True
            # a registered peer sends its next frame as binary: closed with 1003, no error frame
            session = PeerSession(Identity.generate(), "bin", "controller")
            ws = await challenged(server.url, session)
            await ws.send(session.register_frame(time.time()), text=True)
            session.receive(await ws.recv(decode=False), time.time())  # register-ack
            await ws.send(session.heartbeat_frame(time.time()))  # bytes: a binary frame
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == CLOSE_UNSUPPORTED_DATA
            assert server.proto.counters["frames_binary"] == 1

    run(main())


def test_a_protocol_1_0_registration_is_unsupported_version_and_closed() -> None:
    async def main() -> None:
        async with serving() as server:
            session = PeerSession(Identity.generate(), "old", "agent", ["echo"])
            ws = await challenged(server.url, session)
            body = bytes(decode_frame(session.register_frame(time.time())).body).replace(b'"v":"1.1"', b'"v":1')
            await ws.send(seal_raw(session.identity, "old", body), text=True)
            assert await error_and_close(ws, session) == (errors.UNSUPPORTED_VERSION, CLOSE_POLICY)

    run(main())


def test_a_result_for_a_task_nobody_assigned_is_not_assigned() -> None:
    async def main() -> None:
        async with serving() as server:
            session = PeerSession(Identity.generate(), "liar", "agent", ["echo"])
            ws = await challenged(server.url, session)
            await ws.send(session.register_frame(time.time()), text=True)
            session.receive(await ws.recv(decode=False), time.time())
            ghost = Task(v=PROTOCOL_VERSION, id="ghost", sender="nobody", ts=time.time(), method="echo", payload=Raw(b"1"))
            await ws.send(session.result_frame(ghost, Raw(b"2"), time.time()), text=True)
            rec = session.receive(await ws.recv(decode=False), time.time())
            assert isinstance(rec.body, Error) and rec.body.code == errors.NOT_ASSIGNED and rec.body.task_id is None
            await ws.close()

    run(main())
