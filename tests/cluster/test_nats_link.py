"""The cluster's own NATS link: its parser over any split of the byte stream, and a round trip through a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from nats_helpers import NatsServer

from aicp.lab.bench.live import _wait_port, free_port
from aicp.live.nats_link import NatsLink, _Wire


def test_messages_split_anywhere_in_the_stream_arrive_whole_and_in_order() -> None:
    async def main() -> None:
        got: list[tuple[str, bytes]] = []
        link = NatsLink("nats://127.0.0.1:1")
        link.subscribe("a", lambda data: got.append(("a", data)))
        link.subscribe("b", lambda data: got.append(("b", data)))
        wire = _Wire(link)
        payloads = [b"", b"x\r\nMSG fake 1 3\r\n", bytes(range(256)) * 40, b"PING"]
        stream = b"INFO {\"max_payload\": 4096}\r\nPING\r\n"
        for i, p in enumerate(payloads):
            stream += b"MSG aicp.s %d %d\r\n%s\r\n" % (1 + i % 2, len(p), p)
            stream += b"HMSG aicp.h 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"  # skipped whole
        stream += b"MSG aicp.r 1 _INBOX.x 2\r\nok\r\n+OK\r\n"
        want = [("a" if i % 2 == 0 else "b", p) for i, p in enumerate(payloads)] + [("a", b"ok")]
        for step in (1, 2, 7, 100, len(stream)):
            got.clear()
            wire.buf, wire.need = b"", 0
            for k in range(0, len(stream), step):
                wire.data_received(stream[k:k + step])
            assert got == want, step
            assert wire.buf == b""
        assert wire.max_payload == 4096

    asyncio.run(main())


def test_a_round_trip_through_nats_server_and_a_message_over_its_max_payload_is_refused(nats_server: NatsServer) -> None:
    async def main() -> None:
        got: list[bytes] = []
        a, b = NatsLink(nats_server.url, "a"), NatsLink(nats_server.url, "b")
        b.subscribe("t.b", got.append)
        a.subscribe("t.b", got.append)  # echo is off: a does not hear itself
        await a.start()
        await b.start()
        try:
            sent = [b"m%d" % i for i in range(50)] + [b"z" * 300_000]
            for m in sent:
                assert a.publish(b"t.b", m)
            assert a.publish(b"t.b", b"frame", b"head\x00")  # a head goes before the payload, in one message
            sent.append(b"head\x00frame")
            assert not a.publish(b"t.b", b"z" * (2 << 20))  # the server's default max_payload is 1 MiB
            assert not a.publish(b"t.b", b"z" * (1 << 20), b"h")  # the head counts towards it
            for _ in range(200):
                if len(got) >= len(sent):
                    break
                await asyncio.sleep(0.01)
            assert got == sent
            assert a.counters["too_large"] == 2 and a.counters["published"] == len(sent)
        finally:
            await a.close()
            await b.close()
        assert not a.connected and not a.publish(b"t.b", b"late")

    asyncio.run(main())


def test_the_link_dials_until_nats_is_up_and_again_after_it_restarts(nats_server: NatsServer) -> None:
    async def main() -> None:
        events: list[str] = []
        got: list[bytes] = []
        nats_server.stop()
        link = NatsLink(nats_server.url, "late", reconnect_wait_s=0.05, connect_timeout_s=0.5,
                        on_disconnected=lambda: events.append("down"), on_reconnected=lambda: events.append("up"))
        link.subscribe("t.x", got.append)
        try:
            await link.start()
        except (OSError, TimeoutError, ConnectionError):
            link.start_later()
        else:
            raise AssertionError("connected to a stopped nats-server")
        assert not link.connected and not link.publish(b"t.x", b"dropped")
        other = NatsLink(nats_server.url, "other")
        try:
            await asyncio.to_thread(nats_server.start)
            await _until(lambda: link.connected)
            assert events == ["up"]
            await other.start()
            other.publish(b"t.x", b"one")
            await _until(lambda: got == [b"one"])
            await asyncio.to_thread(nats_server.restart)
            await _until(lambda: events == ["up", "down", "up"])
            await _until(lambda: other.connected)  # its keep-alive re-dials too
            other.publish(b"t.x", b"two")  # the subscription was made again
            await _until(lambda: got == [b"one", b"two"])
            assert link.counters["disconnects"] == 1 and link.counters["dropped"] == 1
        finally:
            await link.close()
            await other.close()

    asyncio.run(main())


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_tls_urls_upgrade_after_info_and_an_unknown_ca_is_refused(tmp_path: Path) -> None:
    """nats-server with --tls (a trustme CA): tls:// works with the CA trusted, and fails without it."""
    import ssl

    import trustme

    from aicp.live.store_jetstream import nats_server_binary

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    port = free_port()
    server = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "--tls", "--tlscert", str(tmp_path / "cert.pem"),
                               "--tlskey", str(tmp_path / "key.pem")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, 10)
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)

        async def main() -> None:
            got: list[bytes] = []
            a = NatsLink(f"tls://127.0.0.1:{port}", "a", ssl_context=trusted)
            b = NatsLink(f"tls://127.0.0.1:{port}", "b", ssl_context=trusted)
            b.subscribe("t.tls", got.append)
            await a.start()
            await b.start()
            try:
                a.publish(b"t.tls", b"secret")
                await _until(lambda: got == [b"secret"])
            finally:
                await a.close()
                await b.close()
            stranger = NatsLink(f"tls://127.0.0.1:{port}", "c", connect_timeout_s=2.0)  # the system trust store: not this CA
            with pytest.raises(ssl.SSLError):
                await stranger.start()
            plain = NatsLink(f"nats://127.0.0.1:{port}", "d", connect_timeout_s=1.0)  # the server requires TLS
            with pytest.raises((ConnectionError, TimeoutError)):
                await plain.start()

        asyncio.run(main())
    finally:
        server.kill()
        server.wait(timeout=5)
