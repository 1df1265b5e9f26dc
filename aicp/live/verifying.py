"""Signature checks on worker threads, frames applied to the core in each connection's order.

libsodium runs in C through cffi, which releases the GIL, so checks made on other
threads use the machine's other cores while the event loop goes on. The core's
state machine does not change: ``RouterProtocol.prepare_verify`` says which check a
frame needs, a worker thread runs it, and the loop then hands the frame and its
verdict to ``frame_received``, strictly in the order the connection sent them.

Checks go to the threads in batches, one per loop iteration and thread, so the
cost of a hand-over (a queue put, a wake-up of the loop) is shared by every frame
of the batch. A connection whose frames wait for checks stops being read at
``max_waiting`` frames, as the loop's own reading would stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aicp.protocol import RouterProtocol, Verification

#: ``apply(conn, data, verification)``: hand one frame to the core, in order.
Apply = Callable[[int, bytes | str, Verification | None], None]


class _Waiting:
    """A frame not yet applied; ``checked`` once its check came back from a thread (or it needs none)."""

    __slots__ = ("checked", "conn", "data", "verification")

    def __init__(self, conn: int, data: bytes | str, verification: Verification | None) -> None:
        self.conn = conn
        self.data = data
        self.verification = verification
        self.checked = verification is None


def _run_batch(batch: list[_Waiting]) -> None:
    for item in batch:
        assert item.verification is not None
        item.verification.run()  # a check that raised is left not done: frame_received makes it inline


class VerifierPool:
    """Runs ``Verification``s on ``threads`` worker threads; O(1) per frame on the loop.

    Each connection has a FIFO of frames not yet applied (``inbox``); a frame is
    applied once it and every frame before it are ready.
    """

    def __init__(self, proto: RouterProtocol, apply: Apply, threads: int, max_waiting: int = 256) -> None:
        self.proto = proto
        self.apply = apply
        self.threads = threads
        self.max_waiting = max_waiting
        self.loop = asyncio.get_running_loop()
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="aicp-verify")
        self.inbox: dict[int, deque[_Waiting]] = {}
        self.room: dict[int, asyncio.Event] = {}
        self.batch: list[_Waiting] = []

    def submit(self, conn: int, data: bytes | str) -> bool:
        """A frame from ``conn``: str for a text frame, bytes for a binary one (never prepared, refused in order).

        False: the connection has ``max_waiting`` frames waiting; await ``wait_room``.
        """
        v = self.proto.prepare_verify(conn, data) if isinstance(data, str) else None
        queue = self.inbox.get(conn)
        if v is None and not queue:
            self.apply(conn, data, None)  # nothing to check ahead and nothing before it: at once
            return True
        if queue is None:
            queue = self.inbox[conn] = deque()
        item = _Waiting(conn, data if v is None else v.data, v)
        queue.append(item)
        if v is not None:
            if not self.batch:
                self.loop.call_soon(self._dispatch)
            self.batch.append(item)
        return len(queue) < self.max_waiting

    async def wait_room(self, conn: int) -> None:
        queue = self.inbox.get(conn)
        if queue is None or len(queue) < self.max_waiting:
            return
        event = self.room.setdefault(conn, asyncio.Event())
        event.clear()
        await event.wait()

    def connection_ended(self, conn: int) -> None:
        """Apply what ``conn`` sent before it closed, in order; checks still running are made inline."""
        queue = self.inbox.pop(conn, None)
        while queue:
            item = queue.popleft()
            self.apply(conn, item.data, item.verification)
        event = self.room.pop(conn, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _dispatch(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        n = min(self.threads, len(batch))
        size = -(-len(batch) // n)
        for i in range(0, len(batch), size):
            part = batch[i : i + size]
            self.executor.submit(_run_batch, part).add_done_callback(lambda _, part=part: self._from_thread(part))  # type: ignore[misc]

    def _from_thread(self, part: list[_Waiting]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for these any more
            self.loop.call_soon_threadsafe(self._checked, part)

    def _checked(self, part: list[_Waiting]) -> None:
        for item in part:
            item.checked = True
        for conn in {item.conn for item in part}:
            self._drain(conn)

    def _drain(self, conn: int) -> None:
        queue = self.inbox.get(conn)
        if queue is None:
            return
        while queue:
            item = queue[0]
            if not item.checked:
                break
            queue.popleft()
            self.apply(conn, item.data, item.verification)
        if len(queue) < self.max_waiting:
            event = self.room.get(conn)
            if event is not None:
                event.set()
        if not queue:
            del self.inbox[conn]
