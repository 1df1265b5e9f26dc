"""Issue 6, bad-input cases that need a real server: 5, 6, 9 and 25-27.

The other cases are pure core tests (tests/core/test_bad_input.py). Each test here
checks the close code or HTTP status the bad peer sees, that the refusal is counted
in GET /metrics, that the router's state did not change where that applies, and
that a healthy agent and controller are served before and after.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from live_helpers import Proc, agent, challenged, metric_samples, run, serving, wait_until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aicp import errors
from aicp.live.controller import AICPController
from aicp.live.handlers import echo
from aicp.live.server import AICPWebSocketServer, ServerLimits
from aicp.messages import RegisterAck, payload
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_POLICY, ProtocolConfig
from aicp.router import RouterConfig
from aicp.signing import Identity

pytestmark = pytest.mark.live


def _state(server: AICPWebSocketServer) -> tuple[Any, ...]:
    """What a refused peer must not change: agents, bindings, connections, tasks, routing counters."""
    proto, router = server.proto, server.router
    stats = router.stats.as_dict()
    stats["failed"] = dict(router.stats.failed)
    return (router.registry.snapshot(), proto.connected_peers(), len(proto._peers), proto.connections, proto.pending_tasks(), stats)


async def _healthy(ctl: AICPController, tag: str) -> None:
    assert await asyncio.gather(*(ctl.submit("echo", f"{tag}-{i}", timeout=10) for i in range(5))) == [f"{tag}-{i}" for i in range(5)]


async def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return await asyncio.to_thread(metric_samples, url)  # in a thread: the router may run on this loop


async def _transport_closes(url: str, reason: str) -> float:
    return (await _metrics(url)).get(("aicp_transport_closes_total", (("reason", reason),)), 0.0)


def test_5_frame_over_the_size_limit_closes_1009() -> None:
    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"echo": echo}), AICPController(server.url, "c") as ctl:
            await _healthy(ctl, "before")
            before = _state(server)
            ws = await connect(server.url, max_size=None)
            await ws.recv()
            await ws.send(b"x" * (server.limits.max_frame_bytes + 1), text=True)
            await ws.wait_closed()
            assert ws.close_code == 1009
            await wait_until(lambda: server.proto.connections == before[3], what="the connection to be forgotten")
            assert _state(server) == before
            assert await _transport_closes(server.url, "too-large") == 1
            await _healthy(ctl, "after")

    run(main())


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_6_compressed_frame_inflating_past_the_limit_closes_1009_without_inflating_it(procs: Callable[..., Proc]) -> None:
    """A 64 MiB frame of zeros deflates to about 64 KiB. The router must stop inflating at 1 MiB.

    The router runs as its own process so its peak RSS (VmHWM) shows whether it inflated the bomb.
    """
    server = procs("-m", "aicp.server", "--port", "0", "--compression", "--log-level", "WARNING")
    url = server.wait_for_line(r"listening on (ws://127\.0\.0\.1:\d+)").group(1)
    bomb_bytes = 64 << 20

    async def main() -> None:
        async with agent(url, "a", {"echo": echo}), AICPController(url, "c") as ctl:
            await _healthy(ctl, "before")
            peak_before = _peak_rss_bytes(server.popen.pid)
            ws = await connect(url, compression="deflate", max_size=None)
            assert ws.protocol.extensions, "permessage-deflate was not negotiated"
            await ws.recv()
            await ws.send(b"0" * bomb_bytes, text=True)
            await ws.wait_closed()
            assert ws.close_code == 1009
            growth = _peak_rss_bytes(server.popen.pid) - peak_before
            assert growth < 24 << 20, f"router peak RSS grew by {growth >> 20} MiB"
            for _ in range(100):  # the router counts the close when its side of the connection ends, maybe after ours
                if await _transport_closes(url, "too-large") == 1:
                    break
                await asyncio.sleep(0.05)
            assert await _transport_closes(url, "too-large") == 1
            await _healthy(ctl, "after")
            samples = await _metrics(url)
            assert samples[("aicp_agents", (("status", "active"),))] == 1
            assert samples[("aicp_tasks_total", (("outcome", "completed"),))] == 10

    run(main(), timeout=30)


def test_9_invalid_utf8_in_a_text_frame_closes_1007() -> None:
    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"echo": echo}), AICPController(server.url, "c") as ctl:
            await _healthy(ctl, "before")
            before = _state(server)
            rejections = dict(server.proto.rejections)
            for bad in (b'{"sender":"\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80"):  # bad byte, bad continuation, a UTF-8 surrogate
                ws = await connect(server.url)
                await ws.recv()
                await ws.send(bad, text=True)  # bytes with text=True: sent as a text frame unchecked
                await ws.wait_closed()
                assert ws.close_code == 1007, bad
            await wait_until(lambda: server.proto.connections == before[3], what="the connections to be forgotten")
            assert _state(server) == before
            assert server.proto.rejections == rejections  # refused before the core saw a byte
            assert await _transport_closes(server.url, "invalid-utf8") == 3
            await _healthy(ctl, "after")

    run(main())


def _fragments(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i : i + step] for i in range(0, len(data), step)]


def test_fragmented_messages_are_reassembled_and_limited_as_a_whole() -> None:
    """The router takes messages from websockets' parser itself (aicp.live.inbound): a task sent in
    fragments, one split inside a multi-byte character, is served; a message whose fragments add up
    past the size limit closes 1009, and one that is invalid UTF-8 only once joined closes 1007."""

    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"echo": echo}):
            session = PeerSession(Identity.generate(), "frag", "controller")
            ws = await challenged(server.url, session)
            await ws.send(_fragments(session.register_frame(time.time()), 3), text=True)
            assert isinstance(session.receive(await ws.recv(decode=False), time.time()).body, RegisterAck)
            tid, frame = session.task_frame("echo", payload("héllo wörld"), time.time())
            split = frame.index("é".encode()) + 1  # inside the two bytes of é
            await ws.send([frame[:split], frame[split:]], text=True)
            result = session.receive(await ws.recv(decode=False), time.time()).body
            assert getattr(result, "task_id", None) == tid and bytes(result.payload) == bytes(payload("héllo wörld"))  # type: ignore[union-attr]
            await ws.close()
            for message, code, reason in (
                (b"x" * (server.limits.max_frame_bytes + 1), 1009, "too-large"),
                (b'{"a":"\xc3', 1007, "invalid-utf8"),  # each fragment alone could be the start of valid text
            ):
                ws = await connect(server.url, max_size=None)
                await ws.recv()
                await ws.send(_fragments(message, 4) if code == 1009 else [message, b"\x28"], text=True)
                await ws.wait_closed()
                assert ws.close_code == code
                await wait_until(lambda reason=reason: server.transport_closes.get(reason) == 1, what=f"the {reason} close to be counted")  # type: ignore[misc]
                assert await _transport_closes(server.url, reason) == 1

    run(main())


async def _register(url: str, agent_id: str) -> str:
    """Connect and register a fresh agent id; return "ok" or the router's error code, then disconnect."""
    session = PeerSession(Identity.generate(), agent_id, "agent", ["echo"])
    ws = await challenged(url, session)
    try:
        await ws.send(session.register_frame(time.time()), text=True)
        rec = session.receive(await ws.recv(decode=False), time.time())
        if isinstance(rec.body, RegisterAck):
            return "ok"
        code = getattr(rec.body, "code", "?")
        await ws.wait_closed()
        assert ws.close_code == CLOSE_POLICY
        return str(code)
    finally:
        await ws.close()


def test_25_connection_and_registration_floods_are_refused_and_memory_stays_bounded() -> None:
    """Connections beyond ``max_connections`` get HTTP 503; new ids beyond ``max_peers`` get `overloaded`.

    A flood from one address is also met by the per-address connection rate
    (`rate-limited`, the next test), and a registered peer sending too fast by the
    per-connection rate limit (`rate-limited`, tests/live/test_resilience.py). Memory stays bounded
    because every table has a cap: bound ids (``max_peers``), dead agents remembered
    (``max_dead_agents``), message ids (``replay_cache_size``).
    """
    max_conns, max_peers, max_dead = 16, 24, 8

    async def main() -> None:
        async with (
            serving(limits=ServerLimits(max_connections=max_conns), protocol_config=ProtocolConfig(max_peers=max_peers, replay_cache_size=500),
                    router_config=RouterConfig(max_dead_agents=max_dead)) as server,
            agent(server.url, "good", {"echo": echo}),
            AICPController(server.url, "ctl") as ctl,
        ):
            await _healthy(ctl, "before")
            # 1. a connection flood: 40 at once, none registers
            attempts = await asyncio.gather(*(connect(server.url) for _ in range(40)), return_exceptions=True)
            opened = [ws for ws in attempts if isinstance(ws, ClientConnection)]
            refused = [e for e in attempts if isinstance(e, InvalidStatus) and e.response.status_code == 503]
            assert len(opened) == max_conns - 2 and len(refused) == 40 - len(opened), attempts
            await _healthy(ctl, "during")  # the two healthy connections keep working at the limit
            await asyncio.gather(*(ws.close() for ws in opened))
            await wait_until(lambda: server.open_connections == 2, what="the flood's connections to close")
            assert await _transport_closes(server.url, "connection-limit") == len(refused)

            # 2. a registration flood: 60 fresh ids, 8 at a time
            codes: list[str] = []
            for batch in range(0, 60, 8):
                codes += await asyncio.gather(*(_register(server.url, f"flood-{i}") for i in range(batch, min(60, batch + 8))))
            assert codes.count("ok") == max_peers - 2 and codes.count(errors.OVERLOADED) == 60 - (max_peers - 2), codes
            await wait_until(lambda: server.open_connections == 2, what="the flood's connections to close")

            # bounded: every table is at or under its cap
            proto, registry = server.proto, server.router.registry
            assert len(proto._peers) == max_peers
            assert len(registry.agents) <= 1 + max_dead and registry.count_by_status()["dead"] <= max_dead
            assert len(proto._replay) <= 500 and proto.connections == 2 and proto.pending_tasks() == 0
            samples = await _metrics(server.url)
            assert samples[("aicp_rejections_total", (("code", errors.OVERLOADED),))] == codes.count(errors.OVERLOADED)
            assert samples[("aicp_agents", (("status", "active"),))] == 1
            await _healthy(ctl, "after")

    run(main(), timeout=40)


def test_25_a_connection_flood_from_one_address_is_rate_limited() -> None:
    """Past its burst, an address's new connections get HTTP 429 before any handshake work, and each
    refusal is counted as `rate-limited`; connections already open keep being served."""
    burst = 6

    async def main() -> None:
        async with (
            serving(protocol_config=ProtocolConfig(connect_rate_per_s=0.5, connect_burst=burst)) as server,
            agent(server.url, "good", {"echo": echo}),
            AICPController(server.url, "ctl") as ctl,
        ):
            await _healthy(ctl, "before")
            attempts = await asyncio.gather(*(connect(server.url) for _ in range(20)), return_exceptions=True)
            opened = [ws for ws in attempts if isinstance(ws, ClientConnection)]
            limited = [e for e in attempts if isinstance(e, InvalidStatus) and e.response.status_code == 429]
            # the agent and the controller took two of the burst (a token may come back meanwhile)
            assert burst - 2 <= len(opened) <= burst - 1 and len(limited) == 20 - len(opened), attempts
            await _healthy(ctl, "during")
            await asyncio.gather(*(ws.close() for ws in opened))
            samples = await _metrics(server.url)
            assert samples[("aicp_rejections_total", (("code", errors.RATE_LIMITED),))] == len(limited)
            assert server.proto.connections == 2

    run(main(), timeout=30)


def test_26_slowloris_is_closed_at_the_open_timeout() -> None:
    open_timeout = 0.5

    async def silent_or_partial(port: int, data: bytes) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        try:
            writer.write(data)
            await writer.drain()
            got = b""
            try:
                async with asyncio.timeout(open_timeout + 8.0):
                    while chunk := await reader.read(4096):
                        got += chunk
            except ConnectionResetError:
                pass
            assert b"101" not in got
            return time.monotonic() - t0
        finally:
            writer.close()

    async def main() -> None:
        async with serving(limits=ServerLimits(open_timeout_s=open_timeout)) as server, agent(server.url, "a", {"echo": echo}), AICPController(server.url, "c") as ctl:
            partial = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"  # the blank line never comes
            slow = [silent_or_partial(server.port, b""), silent_or_partial(server.port, partial)]
            held = asyncio.gather(*slow)
            await asyncio.sleep(open_timeout / 2)
            assert server.proto.connections == 2 and server.open_connections == 2  # the core never hears of them
            await _healthy(ctl, "during")  # served while the slow handshakes hang
            for elapsed in await held:
                assert open_timeout * 0.8 <= elapsed < open_timeout + 5.0
            assert await _transport_closes(server.url, "open-timeout") == 2
            await _healthy(ctl, "after")

    run(main())


def test_27_a_peer_that_never_reads_is_closed_1013_as_a_slow_consumer() -> None:
    """Two controllers each ask for 40 results of 256 KiB and do not read them.

    Kernel buffers and the transport's write limit fill, then the router's queue for the
    peer reaches ``send_queue`` (16 here), and it is closed with 1013. A small receive
    buffer (8 KiB) and ``max_queue=1`` make sure the peer really stops reading. The first
    never reads again: the router must still let go of it within ``close_timeout_s``
    rather than wait on it. The second starts reading once it was cut off, and finds 1013.
    """
    big = "z" * (256 << 10)

    async def main() -> None:
        async with (
            serving(limits=ServerLimits(send_queue=16, write_limit=64 << 10, close_timeout_s=1.0)) as server,
            agent(server.url, "good", {"echo": echo}),
            agent(server.url, "bulk", {"bulk": echo}, concurrency=64),
            AICPController(server.url, "ctl") as ctl,
        ):
            await _healthy(ctl, "before")

            async def sloth(name: str) -> ClientConnection:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
                session = PeerSession(Identity.generate(), name, "controller")
                ws = await challenged(server.url, session, sock=sock, max_queue=1, max_size=None)
                await ws.send(session.register_frame(time.time()), text=True)
                assert isinstance(session.receive(await ws.recv(decode=False), time.time()).body, RegisterAck)
                for _ in range(40):
                    await ws.send(session.task_frame("bulk", payload(big), time.time(), timeout_ms=20_000)[1], text=True)
                return ws

            mute = await sloth("mute")
            await wait_until(lambda: server.transport_closes.get("slow-consumer", 0) == 1, timeout=15, what="the first slow-consumer close")
            t0 = time.monotonic()
            await wait_until(lambda: "mute" not in server.proto.connected_peers(), timeout=5, what="the router to let go of the mute peer")
            assert time.monotonic() - t0 < 1.0 + 2.0
            await _healthy(ctl, "during")
            mute.transport.abort()  # it never reads, so it would not see a close handshake end

            reader = await sloth("reader")
            await wait_until(lambda: server.transport_closes.get("slow-consumer", 0) == 2, timeout=15, what="the second slow-consumer close")
            with pytest.raises(ConnectionClosed):  # now read: everything buffered drains, then the close frame
                async with asyncio.timeout(10):
                    while True:
                        await reader.recv(decode=False)
            assert reader.close_code == 1013
            await wait_until(lambda: server.proto.pending_tasks() == 0, timeout=10, what="the bulk tasks to end")
            # Both are gone; the healthy agents and controller are as before.
            await wait_until(lambda: set(server.proto.connected_peers()) == {"good", "bulk", "ctl"}, what="the readers to be disconnected")
            assert server.router.registry.count_by_status()["active"] == 2
            assert await _transport_closes(server.url, "slow-consumer") == 2
            await _healthy(ctl, "after")

    run(main(), timeout=40)
