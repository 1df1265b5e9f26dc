"""Peers that live inside the router process: handlers registered on the server, and its own controller.

They talk to the ``RouterProtocol`` through the same frames, signatures and
handshake as remote peers; only the transport is a function call scheduled with
``loop.call_soon`` (so a frame is never handled inside another frame's handling).
The server's ``register_handler`` and ``route_message`` are built on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from aicp import errors
from aicp.live.client import OutcomeWaiter
from aicp.live.handlers import Handler, invoke
from aicp.messages import Challenge, Error, Result, Role, Task, payload
from aicp.peer import READY, PeerSession
from aicp.signing import Identity

log = logging.getLogger("aicp.local")


class PeerHost(Protocol):
    """What a local peer needs from the server."""

    def attach_local(self, on_frame: Callable[[bytes], None], on_close: Callable[[], None]) -> int: ...

    def feed(self, conn: int, data: bytes) -> None: ...


class LocalPeer:
    """An in-process agent (``handlers``) or controller (no handlers)."""

    def __init__(
        self, hub: PeerHost, peer_id: str, role: Role, handlers: Mapping[str, Handler] | None = None, concurrency: int = 64, identity: Identity | None = None
    ) -> None:
        self.hub = hub
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.session = PeerSession(identity or Identity.generate(), peer_id, role, list(self.handlers), concurrency)
        self.waiter = OutcomeWaiter()
        self.conn: int | None = None
        self.ready = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self) -> None:
        self.ready.clear()
        self.session.connection_made()
        self.conn = self.hub.attach_local(self._on_frame, self._on_close)

    def detach(self) -> None:
        if self.conn is not None:
            self.hub.feed(self.conn, self.session.deregister_frame(time.time(), "detached"))

    def _on_close(self) -> None:
        self.conn = None
        self.ready.clear()
        self.waiter.fail_all(errors.SHUTTING_DOWN, "local connection closed")

    def _on_frame(self, data: bytes) -> None:
        try:
            rec = self.session.receive(data, time.time())
        except errors.ProtocolError as exc:
            log.warning("%s refused a frame: %s", self.session.peer_id, exc)
            return
        body = rec.body
        if isinstance(body, Challenge) and self.conn is not None:
            self.hub.feed(self.conn, self.session.register_frame(time.time()))
        elif self.session.state == READY and not self.ready.is_set():
            self.ready.set()
        if isinstance(body, Task):
            t = asyncio.get_running_loop().create_task(self._run(body))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        elif isinstance(body, (Result, Error)):
            if not self.waiter.settle(body) and isinstance(body, Error):
                log.warning("%s: router error %s: %s", self.session.peer_id, body.code, body.message)

    async def _run(self, task: Task) -> None:
        async with self._slots:
            try:
                handler = self.handlers[task.method]
                value = await invoke(handler, msgspec.json.decode(task.payload))
                frame = self.session.result_frame(task, payload(value), time.time())
            except Exception as exc:
                frame = self.session.result_frame(task, payload(None), time.time(), ok=False, reason=f"{type(exc).__name__}: {exc}")
        if self.conn is not None:
            self.hub.feed(self.conn, frame)

    async def submit(self, method: str, obj: Any, timeout: float = 30.0, task_id: str | None = None) -> Any:
        if self.conn is None:
            raise errors.TaskError(errors.SHUTTING_DOWN, "router is not running")
        async with asyncio.timeout(5.0):
            await self.ready.wait()
        tid, frame = self.session.task_frame(method, payload(obj), time.time(), task_id, timeout * 1000.0)
        fut = self.waiter.expect(tid)
        self.hub.feed(self.conn, frame)
        try:
            async with asyncio.timeout(timeout + 2.0):
                return await fut
        except TimeoutError:
            raise errors.TaskError(errors.TIMEOUT, f"no outcome within {timeout:g} s", tid) from None
        finally:
            self.waiter.forget(tid)
