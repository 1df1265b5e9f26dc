"""Framing by hand: ``links.frame_texts`` writes what websockets would; ``inbound`` reads what websockets would."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve
from websockets.frames import apply_mask
from websockets.protocol import Protocol, Side, State

from aicp.live.inbound import DirectServerConnection
from aicp.live.links import FrameBatcher, frame_texts

#: Every header length form (7-bit, 16-bit, 64-bit) at its edges, and an empty message.
MESSAGES = [b"", b"a" * 125, b"b" * 126, b"c" * 65535, b"d" * 65536, '{"x":"é"}'.encode()]


def test_unmasked_frames_are_byte_for_byte_websockets_own() -> None:
    server = Protocol(Side.SERVER, state=State.OPEN)
    for message in MESSAGES:
        server.send_text(message)
    assert frame_texts(MESSAGES, masked=False) == b"".join(server.data_to_send())


@pytest.mark.parametrize(("reader", "masked"), [(Side.SERVER, True), (Side.CLIENT, False)])
def test_websockets_parses_them_back_as_whole_text_messages(reader: Side, masked: bool) -> None:
    peer = Protocol(reader, state=State.OPEN, max_size=None)
    peer.receive_data(frame_texts(MESSAGES, masked=masked))
    events = peer.events_received()
    assert [bytes(e.data) for e in events] == MESSAGES and all(e.fin for e in events)  # type: ignore[union-attr]
    assert peer.state is State.OPEN


def test_a_server_refuses_an_unmasked_client_frame() -> None:
    server = Protocol(Side.SERVER, state=State.OPEN)
    server.receive_data(frame_texts([b"x"], masked=False))
    assert server.events_received() == [] and server.state is State.CLOSING


def _client_frame(opcode: int, data: bytes, fin: bool = True) -> bytes:
    """One masked client frame, built by hand (a control frame, a fragment)."""
    key = os.urandom(4)
    assert len(data) < 126
    return bytes((0x80 * fin | opcode, 0x80 | len(data))) + key + apply_mask(data, key)


def test_direct_delivery_sees_every_message_once_in_order_however_the_bytes_are_cut() -> None:
    """The router's fast path (aicp.live.inbound) and websockets' parser share one byte stream:
    pings, fragmented messages and frames cut at random places hand over between them."""
    rng = random.Random(7)
    messages = [b"", b"a" * 125, b"b" * 126, "héllo".encode(), b"c" * 70_000, b'{"x":1}', "😀".encode() * 40]
    stream: list[bytes] = []
    expected: list[tuple[bytes, bool]] = []
    for i in range(60):
        message = messages[i % len(messages)]
        if i % 9 == 4:  # a fragmented text message, in three parts
            stream += [_client_frame(0x1, message[:1], fin=False), _client_frame(0x0, message[1:2], fin=False), _client_frame(0x0, message[2:48])]
            message = message[:48]  # whole characters: 12 of the 4-byte emoji
        elif i % 11 == 3:
            stream.append(_client_frame(0x9, b"ping"))  # answered by websockets, delivered to nobody
            stream.append(frame_texts([message], masked=True))
        elif i % 13 == 5:  # binary
            key = os.urandom(4)
            stream.append(bytes((0x82, 0x80 | 7)) + key + apply_mask(b"binary!", key))
            expected.append((b"binary!", True))
            continue
        else:
            stream.append(frame_texts([message], masked=True))
        expected.append((message, False))
    data = b"".join(stream)

    async def main() -> list[tuple[bytes, bool]]:
        got: list[tuple[bytes, bool]] = []
        done = asyncio.Event()

        async def handler(ws: DirectServerConnection) -> None:
            def on_message(message: bytes, binary: bool) -> None:
                got.append((message, binary))
                if len(got) == len(expected):
                    done.set()

            ws.direct(on_message)
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, create_connection=DirectServerConnection, max_size=1 << 20, compression=None) as server:  # type: ignore[arg-type]
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:  # no extension: the fast path applies
                pos = 0
                while pos < len(data):
                    step = rng.choice([1, 2, 3, 7, 100, 1000, 5000, 70_010])
                    client.transport.write(data[pos : pos + step])
                    pos += step
                    if rng.random() < 0.3:
                        await asyncio.sleep(0.001)  # a separate read on the server, most likely
                await asyncio.wait_for(done.wait(), 10)
                assert client.state is State.OPEN
        return got

    assert asyncio.run(main()) == expected


def _delivered(drive: Callable[[ClientConnection], Awaitable[None]], count: int = 5) -> list[bytes]:
    """Run ``drive`` on a client connected to a server on 127.0.0.1; the first ``count`` messages that server got, in order."""

    async def main() -> list[bytes]:
        got: list[bytes] = []
        done = asyncio.Event()

        async def handler(ws: object) -> None:
            async for message in ws:  # type: ignore[attr-defined]
                got.append(message.encode() if isinstance(message, str) else message)
                if len(got) == count:
                    done.set()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
                await drive(ws)
                await asyncio.wait_for(done.wait(), 5)
        return got

    return asyncio.run(main())


@pytest.mark.parametrize("eager", [False, True])
def test_a_batcher_keeps_the_order_and_an_eager_one_writes_the_first_frame_of_an_iteration_at_once(eager: bool) -> None:
    """``FrameBatcher(eager=True)`` (the gateway's link): the first frame of a loop iteration leaves at
    once, the ones after it in the same iteration wait for the flush; every frame arrives once, in order."""

    async def drive(ws: ClientConnection) -> None:
        batch = FrameBatcher(ws, eager=eager, max_hold_s=60.0)  # the hold is another test's: a preempted test must not hit it
        batch.add(b"a")
        assert batch.pending == ([] if eager else [b"a"])  # eager: written, not held
        batch.add(b"b")
        batch.add(b"c")
        assert batch.pending == ([b"b", b"c"] if eager else [b"a", b"b", b"c"])  # the rest of the iteration is batched
        await asyncio.sleep(0)  # the flush scheduled by the first add runs
        assert batch.pending == [] and not batch.window
        batch.add(b"d")  # a new iteration: eager writes its first frame at once again
        assert batch.pending == ([] if eager else [b"d"])
        batch.add(b"e")

    assert _delivered(drive) == [b"a", b"b", b"c", b"d", b"e"]


@pytest.mark.parametrize("eager", [False, True])
def test_a_batch_held_longer_than_max_hold_is_written_before_the_iteration_ends(eager: bool) -> None:
    """A long loop iteration (a backlog read after a pause) does not hold its first frames to its end: the
    frame added after ``max_hold_s`` writes the batch at once; the frames keep their order and arrive once."""

    async def drive(ws: ClientConnection) -> None:
        batch = FrameBatcher(ws, eager=eager, max_hold_s=0.0005)
        batch.add(b"a")
        batch.add(b"b")  # within the hold: batched
        assert batch.pending == ([b"b"] if eager else [b"a", b"b"])
        time.sleep(0.002)  # this iteration goes on handling other frames
        batch.add(b"c")  # past the hold: the batch is written now, not at the end of the iteration
        assert batch.pending == []
        batch.add(b"d")  # a new batch, its hold starting now
        assert batch.pending == [b"d"]
        await asyncio.sleep(0)  # the flush scheduled at the start of the iteration ends it
        assert batch.pending == [] and not batch.window
        batch.add(b"e")

    assert _delivered(drive) == [b"a", b"b", b"c", b"d", b"e"]


def test_a_held_batch_is_written_when_another_link_of_the_loop_adds_a_frame_past_the_hold() -> None:
    """``max_hold_s`` holds across the links of one loop: in a long iteration the router's link to one of
    several agents gets its next frame only every few tasks, so the frame added to *another* batcher
    past the hold writes the stale batch; a batch younger than the hold is left to the end of the iteration."""

    async def drive(ws: ClientConnection) -> None:
        stale = FrameBatcher(ws, max_hold_s=0.0005)
        other = FrameBatcher(ws, max_hold_s=0.0005)  # another link (the same connection here: what arrives shows the writes' order)
        stale.add(b"a")
        began = time.perf_counter()
        while time.perf_counter() - began <= 0.001:  # this iteration goes on handling other frames
            pass
        other.add(b"b")  # past the hold of "a": "a" is written now; "b" begins a batch of its own
        assert stale.pending == [] and other.pending == [b"b"]
        stale.add(b"c")  # within the hold of "b": both held
        assert stale.pending == [b"c"] and other.pending == [b"b"]
        await asyncio.sleep(0)  # the flushes scheduled in the iteration end it
        assert stale.pending == [] and other.pending == [] and not stale.holds.waiting
        stale.add(b"d")
        other.add(b"e")

    # "a" left alone, at once; then the iteration's flushes in the order they were scheduled ("c" after
    # "a", "b"): each batcher keeps its own frames' order, which is all a link needs (one batcher a link).
    assert _delivered(drive) == [b"a", b"c", b"b", b"d", b"e"]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_lone_masked_frame_parses_back_at_every_header_length(size: int) -> None:
    message = b"m" * size
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.receive_data(frame_texts([message], masked=True))
    [event] = server.events_received()
    assert bytes(event.data) == message and event.fin and event.opcode.name == "TEXT"  # type: ignore[union-attr]


def test_masking_keys_are_fresh_per_frame_and_read_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicp.live import links

    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(links.os, "urandom", counting)
    keys = links.MaskKeys(size=64)
    taken = [keys.take() for _ in range(40)]
    assert calls == [64, 64, 64]  # 16 keys per block of 64 bytes: 40 keys, 3 reads
    assert all(len(k) == 4 for k in taken) and len(set(taken)) == 40
    keys.reset()
    keys.take()
    assert len(calls) == 4  # after a reset (a fork's child) the next key starts a new block
    # each frame of a batch carries its own key: the 4 bytes after each 2-byte header differ
    monkeypatch.setattr(links, "mask_keys", links.MaskKeys(size=64))
    framed = frame_texts([b"a", b"b", b"c"], masked=True)
    assert len({framed[i * 7 + 2 : i * 7 + 6] for i in range(3)}) == 3
