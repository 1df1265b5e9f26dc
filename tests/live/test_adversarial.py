"""Bad peers are refused with their wire code while everyone else keeps being served."""

from __future__ import annotations

import asyncio
import time

import pytest
from live_helpers import agent, challenged, error_and_close, run, serving
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aicp import errors
from aicp.live.controller import AICPController
from aicp.live.handlers import echo
from aicp.live.server import ServerLimits
from aicp.messages import PROTOCOL_VERSION, Error, Heartbeat, Register, seal
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_POLICY
from aicp.signing import Identity

pytestmark = pytest.mark.live


def test_bad_signature_replayed_registration_and_unregistered_message_are_refused() -> None:
    async def main() -> None:
        async with (
            serving() as server,
            agent(server.url, "good-agent", {"echo": echo}),
            AICPController(server.url, "good-ctl") as ctl,
        ):
            assert await ctl.submit("echo", "before", timeout=5) == "before"

            # 1. A registration signed by another key than the one it claims: invalid-signature, connection closed.
            mallory, honest = Identity.generate(), Identity.generate()
            s1 = PeerSession(honest, "forger", "agent", ["echo"])
            ws = await challenged(server.url, s1)
            assert s1.nonce is not None
            body = Register(v=PROTOCOL_VERSION, id="r1", sender="forger", ts=time.time(), nonce=s1.nonce, role="agent", key=honest.public_key_text, capabilities=["echo"])
            forged = seal(mallory, "forger", body).replace(mallory.public_key_text.encode(), honest.public_key_text.encode())
            await ws.send(forged, text=True)
            assert await error_and_close(ws, s1) == (errors.INVALID_SIGNATURE, CLOSE_POLICY)

            # 2. A valid registration replayed on another connection: its nonce belongs to the first one.
            s2 = PeerSession(Identity.generate(), "replayer", "agent", ["echo"])
            ws_a = await challenged(server.url, s2)
            captured = s2.register_frame(time.time())
            ws_b = await challenged(server.url, PeerSession(Identity.generate(), "eve", "agent"))
            await ws_b.send(captured, text=True)
            assert await error_and_close(ws_b, s2) == (errors.BAD_NONCE, CLOSE_POLICY)
            await ws_a.close()

            # 3. A message before registration: auth-required.
            s3 = PeerSession(Identity.generate(), "early", "agent")
            ws = await challenged(server.url, s3)
            await ws.send(s3.heartbeat_frame(time.time()), text=True)
            assert await error_and_close(ws, s3) == (errors.AUTH_REQUIRED, CLOSE_POLICY)

            # 4. A registered peer whose later frame carries a bad signature: refused, connection kept.
            ident = Identity.generate()
            s4 = PeerSession(ident, "flaky", "agent", ["echo"])
            ws = await challenged(server.url, s4)
            await ws.send(s4.register_frame(time.time()), text=True)
            s4.receive(await ws.recv(decode=False), time.time())  # the ack
            hb = seal(Identity.generate(), "flaky", Heartbeat(v=PROTOCOL_VERSION, id="hb1", sender="flaky", ts=time.time()))
            await ws.send(hb.replace(hb[hb.index(b'"key":"') + 7 : hb.index(b'","sig"')], ident.public_key_text.encode()), text=True)
            rec = s4.receive(await ws.recv(decode=False), time.time())
            assert isinstance(rec.body, Error) and rec.body.code == errors.INVALID_SIGNATURE
            # ... and a replayed heartbeat: duplicate.
            frame = s4.heartbeat_frame(time.time())
            await ws.send(frame, text=True)
            await ws.send(frame, text=True)
            rec = s4.receive(await ws.recv(decode=False), time.time())
            assert isinstance(rec.body, Error) and rec.body.code == errors.DUPLICATE
            await ws.close()

            # Everyone else is still served, and the refusals are counted by code.
            assert await asyncio.gather(*(ctl.submit("echo", i, timeout=5) for i in range(10))) == list(range(10))
            rej = server.proto.rejections
            for code in (errors.INVALID_SIGNATURE, errors.BAD_NONCE, errors.AUTH_REQUIRED, errors.DUPLICATE):
                assert rej.get(code, 0) >= 1, (code, rej)
            assert rej[errors.INVALID_SIGNATURE] == 2

    run(main())


def test_connections_over_the_limit_are_refused_with_503() -> None:
    async def main() -> None:
        async with serving(limits=ServerLimits(max_connections=2)) as server, agent(server.url, "a", {"echo": echo}), AICPController(server.url, "c") as ctl:
            with pytest.raises(InvalidStatus) as info:
                await connect(server.url)
            assert info.value.response.status_code == 503
            assert await ctl.submit("echo", 1, timeout=5) == 1

    run(main())
