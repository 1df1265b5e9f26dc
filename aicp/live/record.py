"""Writing a router's trace to a file (``aicp serve --record FILE``); the format is docs/TRACE.md.

The core hands each event to :meth:`TraceWriter.write`, which only encodes it into a
buffer (a few microseconds); the buffer goes to the file every ``flush_s`` (0.25 s)
and when it passes 256 KiB, so the hot path never waits on the disk. A ``.gz`` name
writes gzip, flushed with a sync point each time, so the file is readable up to
the last flush even if the router is killed: a crash loses at most the last
``flush_s`` of events and leaves a readable prefix (``aicp.trace.parse`` drops a
torn last line).
"""

from __future__ import annotations

import asyncio
import gzip
import io
from pathlib import Path

from aicp import trace


class TraceWriter:
    """Buffered, append-only trace file. Memory: the buffer, at most 256 KiB plus one flush period of events."""

    def __init__(self, path: str | Path, flush_s: float = 0.25, max_buffer: int = 256 * 1024) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: gzip.GzipFile | io.BufferedWriter = (
            gzip.GzipFile(self.path, "wb", compresslevel=3) if self.path.suffix == ".gz" else open(self.path, "wb")
        )
        self._buffer = bytearray()
        self._max = max_buffer
        self._flush_s = flush_s
        self._timer: asyncio.TimerHandle | None = None
        self.events = 0

    def write(self, event: trace.TraceEvent) -> None:
        self._buffer += trace.encode(event)
        self.events += 1
        if len(self._buffer) >= self._max:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(self._buffer)
            self._buffer.clear()
            self._file.flush()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush every ``flush_s`` on ``loop`` until :meth:`close`."""

        def tick() -> None:
            self.flush()
            self._timer = loop.call_later(self._flush_s, tick)

        self._timer = loop.call_later(self._flush_s, tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        self._file.close()
