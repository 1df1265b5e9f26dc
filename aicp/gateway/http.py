"""uvicorn's httptools protocol, with one write per connection per loop iteration.

uvicorn writes a response's status line and headers on ``http.response.start`` and
its body on ``http.response.body``: two ``send`` syscalls, and with TCP_NODELAY (set
by uvloop and asyncio) two TCP segments, so the client may wake twice for one
answer. ``CoalescingHttpToolsProtocol`` gives uvicorn a transport whose ``write``
keeps the bytes until the end of the current loop iteration (``call_soon``) and then
sends them in one call, the way ``aicp.live.links.FrameBatcher`` does for WebSocket
frames. A complete response does not wait for the end of the iteration: uvicorn calls
``on_response_complete`` right after writing its last byte, and the held bytes leave
then (otherwise the answer would wait behind a poll and whatever else that iteration
runs, on the critical path of every request). Nothing else changes: reading, flow
control and closing are the real transport's (``close`` sends what is held first;
``abort`` drops it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """A transport proxy that sends the writes of one loop iteration in one ``write``. O(1) per write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        """The whole response is written: send it now, in one write (the ``call_soon`` flush then finds nothing)."""
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()
