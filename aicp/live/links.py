"""How the server writes to one connection: a WebSocket peer, or a peer inside the router process.

Each link owns one connection's outgoing frames, so a slow peer never stalls the
router's loop or the other peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

log = logging.getLogger("aicp.live.links")

CLOSE_TRY_AGAIN_LATER = 1013


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
        self.writer = asyncio.get_running_loop().create_task(self._write())

    def send(self, data: bytes) -> None:
        if self.closing:
            return
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
                    while queue and isinstance(queue[0], bytes):
                        protocol.send_text(queue.popleft())  # type: ignore[arg-type]
                    transport.write(b"".join(protocol.data_to_send()))
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
