"""The control plane's client: submit tasks, get verified results.

``AICPController`` keeps one connection to the router and any number of tasks in
flight over it. ``submit`` returns the result payload once its signature has been
checked against the agent's key, or raises ``errors.TaskError`` with the wire code.

If the connection drops, it reconnects, re-registers, and re-sends every pending
task under the same id. The router answers a re-sent id with the task's one
outcome (still running: the outcome when it comes; finished: the stored outcome),
never with a second execution.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from aicp import errors
from aicp.live.client import DEFAULT_URL, PeerClient
from aicp.messages import payload
from aicp.signing import Identity

#: Extra time the controller waits beyond a task's timeout for the router's own verdict.
LOCAL_GRACE_S = 2.0

#: Client-side code (never on the wire): the connection ended for good (``reconnect=False``)
#: before the task's outcome arrived, so the outcome is unknown.
CONNECTION_LOST = "connection-lost"


class _Submitted(msgspec.Struct):
    method: str
    raw: msgspec.Raw
    timeout_ms: float | None


class AICPController(PeerClient):
    """An async control-plane client. Use ``async with AICPController(...) as ctl``."""

    def __init__(self, server_url: str = DEFAULT_URL, controller_id: str = "controller", identity: Identity | None = None, **kwargs: Any) -> None:
        super().__init__(server_url, controller_id, identity or Identity.generate(), role="controller", **kwargs)
        self._submitted: dict[str, _Submitted] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self, retry: bool = False) -> None:
        """Connect, register and start reading outcomes in the background."""
        if retry:
            await self.connect_with_retry()
        else:
            await self.connect()
        self._listener = asyncio.get_running_loop().create_task(self._listen_then_fail_pending())

    async def _listen_then_fail_pending(self) -> None:
        try:
            await self.listen()
        finally:
            if not self.closing:  # no reconnect coming: nobody will answer the pending tasks
                code = errors.SHUTTING_DOWN if self.goaway is not None else CONNECTION_LOST
                self.waiter.fail_all(code, "connection to the router ended before the outcome arrived")

    async def __aenter__(self) -> AICPController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def in_flight(self) -> int:
        return len(self._submitted)

    async def submit(self, method: str, obj: Any, timeout: float = 30.0, task_id: str | None = None) -> Any:
        """Run one task; returns the verified result payload (decoded JSON) or raises ``TaskError``.

        ``task_id`` makes the call idempotent: the same id submitted again gets the same outcome.
        """
        if self.closing or (self._listener is not None and self._listener.done()):
            raise errors.TaskError(errors.SHUTTING_DOWN if self.closing else CONNECTION_LOST, "controller is not connected", task_id or "")
        tid = task_id or self.session.new_id()
        fut = self.waiter.expect(tid)
        self._submitted[tid] = _Submitted(method, payload(obj), timeout * 1000.0)
        try:
            await self._send_task(tid)  # if not connected, _on_ready sends it after registering
            async with asyncio.timeout(timeout + LOCAL_GRACE_S):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise errors.TaskError(errors.TIMEOUT, f"no outcome within {timeout:g} s", tid) from None
        finally:
            self._submitted.pop(tid, None)
            self.waiter.forget(tid)

    async def _send_task(self, tid: str) -> bool:
        sub = self._submitted.get(tid)
        if sub is None:
            return True
        _, frame = self.session.task_frame(sub.method, sub.raw, time.time(), tid, sub.timeout_ms)
        return await self._send(frame)

    async def _on_ready(self) -> None:
        for tid in list(self._submitted):
            if not await self._send_task(tid):
                return

    async def _on_close(self) -> None:
        self.waiter.fail_all(errors.SHUTTING_DOWN, "controller closed")
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
