"""How the server writes to one connection: a WebSocket peer, or a peer inside the router process.

Each link owns one connection's outgoing frames, so a slow peer never stalls the
router's loop or the other peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask  # websockets' C version when built, else its Python one
from websockets.protocol import Protocol, Side, State

log = logging.getLogger("aicp.live.links")

CLOSE_TRY_AGAIN_LATER = 1013


def frame_texts(messages: list[bytes], masked: bool) -> bytes:
    """Unfragmented WebSocket text frames for ``messages`` (RFC 6455 §5.2), as one buffer to write.

    What websockets' ``Protocol.send_text`` writes when no extension is negotiated, for
    a fraction of its cost (no ``Frame`` object per message). A client masks every frame
    with a fresh random key (``masked``), taken from ``mask_keys`` (``os.urandom`` read in
    bulk). A client's usual batch, one result or one task, is framed without the loop.
    """
    if masked and len(messages) == 1:
        data = messages[0]
        n = len(data)
        key = mask_keys.take()
        head = bytes((0x81, 0x80 | n)) if n < 126 else _HEADER_16.pack(0x81, 0xFE, n) if n < 65536 else _HEADER_64.pack(0x81, 0xFF, n)
        return head + key + apply_mask(data, key)
    out: list[bytes] = []
    bit = 0x80 if masked else 0
    for data in messages:
        n = len(data)
        if n < 126:
            out.append(bytes((0x81, bit | n)))
        elif n < 65536:
            out.append(_HEADER_16.pack(0x81, bit | 126, n))
        else:
            out.append(_HEADER_64.pack(0x81, bit | 127, n))
        if masked:
            key = mask_keys.take()
            out.append(key)
            out.append(apply_mask(data, key))
        else:
            out.append(data)
    return b"".join(out)


class MaskKeys:
    """Fresh 4-byte masking keys for a client's frames, cut from ``os.urandom`` read ``size`` bytes at a time.

    RFC 6455 §5.3 asks for keys from a strong source of entropy that the page cannot
    predict: they are ``os.urandom`` bytes as before (websockets calls ``os.urandom(4)``
    per frame), each handed out once (``list.pop`` is atomic, so threads running their
    own event loops never share one), but one ``getrandom`` call serves ``size // 4``
    frames instead of one per batch (nearly one per task in an agent). A forked child
    starts a new block, so parent and child never share keys. O(1) amortised per key.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._keys: list[bytes] = []
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        """Drop the keys left (the next key starts a new block)."""
        self._keys = []

    def take(self) -> bytes:
        try:
            return self._keys.pop()
        except IndexError:
            block = os.urandom(self.size)
            keys = [block[i : i + 4] for i in range(0, self.size - 3, 4)]
            key = keys.pop()
            self._keys = keys
            return key


mask_keys: Final = MaskKeys()


_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def write_texts(protocol: Protocol, transport: asyncio.Transport, messages: list[bytes]) -> None:
    """Write ``messages`` as text frames on an open connection, in one ``transport.write``.

    With an extension (permessage-deflate) websockets frames them; otherwise ``frame_texts``.
    """
    if protocol.extensions:
        for data in messages:
            protocol.send_text(data)
        transport.write(b"".join(protocol.data_to_send()))
        return
    queued = protocol.data_to_send()  # normally empty: websockets writes its own frames at once
    framed = frame_texts(messages, protocol.side is Side.CLIENT)
    transport.write(b"".join([*queued, framed]) if queued else framed)


class _Holds:
    """The batchers of one event loop that hold a batch now, in the order their batches began.

    ``FrameBatcher.max_hold_s`` bounds a frame's wait on every link of the loop, not only
    on the link a frame is next added to: in a long iteration (a backlog read after a wait
    for a CPU) the router hands out tasks round robin, so a link to one of 8 agents got its
    next frame only every 8th task, 3-4 ms later, and its first task waited that long, not
    ``max_hold_s``; an agent process's results on one of its connections waited for the
    tasks of its other connections. O(1) amortised per frame: a batch joins once, leaves once,
    and each add looks at the oldest batch only.
    """

    def __init__(self) -> None:
        self.waiting: dict[FrameBatcher, float] = {}  # batcher -> perf_counter() when its batch began; insertion order is age order

    def flush_stale(self, now: float, max_hold_s: float) -> None:
        """Write every batch that began more than ``max_hold_s`` before ``now``, oldest first."""
        waiting = self.waiting
        while waiting:
            batcher, began = next(iter(waiting.items()))
            if now - began <= max_hold_s:
                return
            batcher.flush_held()  # leaves ``waiting``


_HOLDS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Holds] = weakref.WeakKeyDictionary()


def _holds_of(loop: asyncio.AbstractEventLoop) -> _Holds:
    holds = _HOLDS.get(loop)
    if holds is None:
        holds = _HOLDS[loop] = _Holds()
    return holds


class FrameBatcher:
    """Coalesces the text frames sent to one WebSocket in one loop iteration into one transport write.

    A frame handed to ``add`` is framed and written at the end of the current loop
    iteration (``call_soon``), together with every other frame added meanwhile: one
    syscall per connection per iteration instead of one per frame, and no task switch.
    ``writable()`` says whether the fast path may be used now: the connection is open
    and the transport is below its high-water mark. When it is not, the caller uses
    ``ws.send`` (flow control) after ``flush()``, so frames keep their order.
    ``on_dropped`` gets the frames of a flush that found the connection closed.

    ``eager``: the first frame of a loop iteration is written at once, not at the end of
    the iteration; the frames added after it in the same iteration are batched as
    before and written by the ``call_soon`` flush it schedules. A lone frame (a
    lightly loaded gateway: one request per iteration) then does not wait for the rest
    of the iteration and a poll; under load it costs at most one more write per
    iteration. Frames keep their order either way.

    ``max_hold_s``: a batch is written as soon as a frame is added to any batcher of the
    same loop more than this long after the batch began, without waiting for the end of
    the iteration (``_Holds``). After a pause of the process (a wait for a CPU), one
    iteration reads a backlog of frames and verifies and handles each (about 0.3-0.5 ms
    of CPU a task); without the bound, the first answer waited for the whole backlog,
    10-20 ms, before its write: the tail of ``aicp bench`` at 1000 tasks/s. With it a
    frame waits at most about ``max_hold_s`` plus one frame's handling, whichever link it
    is on, at the cost of a write per link and ``max_hold_s`` of a long iteration. ``0``
    would write every frame at once. Costs one ``perf_counter`` per frame.
    """

    def __init__(self, ws: Connection, on_dropped: Callable[[list[bytes]], None] | None = None, eager: bool = False,
                 max_hold_s: float = 0.001) -> None:
        self.ws = ws
        self.protocol = ws.protocol
        self.transport = ws.transport
        self.high_water = self.transport.get_write_buffer_limits()[1]
        self.on_dropped = on_dropped
        self.pending: list[bytes] = []
        self.loop = asyncio.get_running_loop()
        self.holds = _holds_of(self.loop)
        self.eager = eager
        self.window = False  # eager: a frame was written at once and the flush that ends this iteration's window is scheduled
        self.max_hold_s = max_hold_s
        self.first_at = 0.0  # perf_counter() when the pending batch (eager: the window) began

    def writable(self) -> bool:
        """True if the fast path may take a frame now. A batch already pending was checked when it began:
        nothing reaches the transport before the batch is flushed, so it is not asked again."""
        return bool(self.pending) or (self.protocol.state is State.OPEN and self.transport.get_write_buffer_size() < self.high_water)

    def add(self, data: bytes) -> None:
        now = time.perf_counter()
        holds = self.holds
        if self.eager:
            if self.window:
                if not self.pending:
                    holds.waiting[self] = now
                self.pending.append(data)  # the flush ending the window is already scheduled
                if now - self.first_at > self.max_hold_s:
                    self.flush_held()
            else:
                self.window = True
                self.first_at = now
                self.loop.call_soon(self.flush)
                write_texts(self.protocol, self.transport, [data])  # writable() was checked by the caller
        else:
            pending = self.pending
            if not pending:
                self.first_at = now
                self.loop.call_soon(self.flush)
                holds.waiting[self] = now
            pending.append(data)
        if holds.waiting:
            holds.flush_stale(now, self.max_hold_s)

    def flush_held(self) -> None:
        """Write the pending batch now, in the middle of a long iteration; the scheduled flush
        still ends the iteration, and the next frame added starts a new batch (its clock restarts)."""
        self.first_at = time.perf_counter()
        self._write_pending()

    def flush(self) -> None:
        self.window = False
        if self.pending:
            self._write_pending()

    def _write_pending(self) -> None:
        """Hand the pending batch to the transport in one write, or to ``on_dropped`` if the connection is no longer open."""
        pending = self.pending
        self.pending = []
        self.holds.waiting.pop(self, None)
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            if self.on_dropped is not None:
                self.on_dropped(pending)
            return
        write_texts(protocol, self.transport, pending)


class WsLink:
    """Writes one connection's outgoing frames in order, from a bounded queue.

    A peer that stops reading first fills the kernel buffers and the transport's
    ``write_limit``; then the writer waits and frames pile up here. At ``max_queue``
    the peer is a slow consumer: the writer is cancelled (it may be stuck waiting for
    the peer to read), a close 1013 is written, and the transport is aborted if the
    close does not finish within ``close_timeout_s``.
    """

    def __init__(self, ws: ServerConnection, max_queue: int, close_timeout_s: float, on_slow: Callable[[], None]) -> None:
        self.ws = ws
        self.max_queue = max_queue
        self.close_timeout_s = close_timeout_s
        self.on_slow = on_slow
        self.queue: deque[bytes | tuple[int, str]] = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.batch = FrameBatcher(ws)
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.queue and self.batch.writable():
            self.batch.add(data)  # written at the end of this loop iteration, with the others
            return
        self.batch.flush()  # what the fast path holds goes first
        if len(self.queue) >= self.max_queue:
            log.warning("closing %s: it reads too slowly (%d frames queued)", self.ws.remote_address, len(self.queue))
            self.queue.clear()
            self.closing = True
            self.on_slow()
            self.writer.cancel()
            self.writer = asyncio.get_running_loop().create_task(self._close_slow())
            return
        self.queue.append(data)
        self.wake.set()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.batch.flush()
            self.queue.append((code, reason))
            self.wake.set()

    async def _close_slow(self) -> None:
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.ws.close(CLOSE_TRY_AGAIN_LATER, "send queue full")
        except TimeoutError:
            self.ws.transport.abort()

    async def _write(self) -> None:
        queue, ws = self.queue, self.ws
        protocol, transport = ws.protocol, ws.transport
        high_water = transport.get_write_buffer_limits()[1]
        with contextlib.suppress(ConnectionClosed):
            while True:
                if not queue:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                if (isinstance(queue[0], bytes) and protocol.state is State.OPEN and ws.send_in_progress is None
                        and transport.get_write_buffer_size() < high_water):
                    # Fast path: frame every queued message with websockets' sans-I/O protocol and
                    # hand them to the transport in one write: one syscall per burst, not per frame.
                    # When the socket backs up, the slow path below (ws.send) applies flow control.
                    burst: list[bytes] = []
                    while queue and isinstance(queue[0], bytes):
                        burst.append(queue.popleft())  # type: ignore[arg-type]
                    write_texts(protocol, transport, burst)
                    await asyncio.sleep(0)
                    continue
                item = queue.popleft()
                if isinstance(item, bytes):
                    await ws.send(item, text=True)
                else:
                    await ws.close(item[0], item[1])
                    return


class LocalLink:
    """A connection to an in-process peer: delivery is a scheduled call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_frame: Callable[[bytes], None], on_close: Callable[[], None], closed: Callable[[], None]) -> None:
        self.loop = loop
        self.on_frame = on_frame
        self.on_close = on_close
        self.closed = closed
        self.closing = False

    def send(self, data: bytes) -> None:
        if not self.closing:
            self.loop.call_soon(self.on_frame, data)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.on_close)
            self.loop.call_soon(self.closed)
