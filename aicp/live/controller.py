"""The control plane's client: submit tasks, get verified results.

``AICPController`` keeps one connection to the router and any number of tasks in
flight over it. ``submit`` returns the result payload once its signature has been
checked against the agent's key, or raises ``errors.TaskError`` with the wire code.

If the connection drops, it reconnects, re-registers, and re-sends every pending
task under the same id. The router answers a re-sent id with the task's one
outcome (still running: the outcome when it comes; finished: the stored outcome),
never with a second execution.

``Controller`` is the same client with the user-facing API: ``submit`` returns a
``TaskResult``, the result as the agent signed it (agent id, agent key, signature,
signed bytes, value), which anyone can check again with plain PyNaCl.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from aicp import errors
from aicp.live.client import DEFAULT_URL, OutcomeWaiter, PeerClient
from aicp.live.keys import identity_for
from aicp.messages import Result, payload
from aicp.peer import Received
from aicp.signing import CONTEXT, Identity, decode_public_key, decode_signature, verify

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
    """An async control-plane client. Use ``async with AICPController(...) as ctl``.

    Without ``controller_id`` the id is ``controller-<random>``, registered as ephemeral
    (docs/PROTOCOL.md §4.4): the router frees it ``window_s`` after this client has gone and
    its last task has ended. (It was ``"controller"``, which the first run's throwaway key
    then held for good, so every later run without an id was refused ``key-mismatch``.)
    """

    def __init__(self, server_url: str | Sequence[str] = DEFAULT_URL, controller_id: str | None = None, identity: Identity | None = None, **kwargs: Any) -> None:
        if controller_id is None:
            kwargs.setdefault("ephemeral", True)
            controller_id = f"controller-{secrets.token_hex(4)}"
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


class TaskResult(msgspec.Struct, frozen=True):
    """A task's result exactly as its agent signed it; ``Controller.submit`` returns one.

    Every field is read from the frame the agent signed and the router forwarded
    byte for byte, after its signature was verified. To check it again without
    AICP, with plain PyNaCl::

        nacl.signing.VerifyKey(result.public_key).verify(result.signed_bytes, result.signature)

    ``body`` is the signed JSON body (``task_id``, ``method``, ``sender``, ``payload``,
    …); ``signed_bytes`` is what the signature covers: ``aicp.signing.CONTEXT + body``.
    """

    task_id: str
    method: str
    agent_id: str
    value: Any  # the result payload, decoded from ``body``
    public_key: bytes  # the agent's raw 32-byte Ed25519 key
    public_key_text: str  # the same key as on the wire: "ed25519:" + base64url
    signature: bytes  # 64 bytes, over ``signed_bytes``
    body: bytes  # the body exactly as signed
    frame: bytes  # the whole frame as received (envelope and body)

    @property
    def signed_bytes(self) -> bytes:
        return CONTEXT + self.body

    def verify(self) -> None:
        """Check the signature again; raises ``errors.VerifyError`` if it does not hold."""
        verify(self.public_key, self.body, self.signature)

    @classmethod
    def from_received(cls, received: Received, body: Result) -> TaskResult:
        """Build from a frame ``PeerSession.receive`` has verified and its decoded ``Result`` body."""
        return cls(
            task_id=body.task_id,
            method=body.method,
            agent_id=body.sender,
            value=msgspec.json.decode(body.payload),
            public_key=decode_public_key(received.key),
            public_key_text=received.key,
            signature=decode_signature(received.sig),
            body=bytes(received.signed),
            frame=bytes(received.frame),
        )


class _ResultWaiter(OutcomeWaiter):
    """Resolves a successful task's future with its ``TaskResult`` instead of the bare payload."""

    def outcome(self, body: Result, received: Received | None) -> Any:
        if received is None:
            raise errors.LocalError("a TaskResult needs the verified frame")
        return TaskResult.from_received(received, body)


class Controller(AICPController):
    """Submit tasks and get verified, self-contained results.

    Use ``async with Controller(url) as controller: r = await controller.submit(method, payload)``.
    ``submit`` returns a ``TaskResult``; a task that ends in an error outcome raises
    ``errors.TaskError`` whose ``code`` is the wire code (``no-agent``, ``timeout``,
    ``agent-failed``, ``rate-limited``, …).

    Without ``controller_id`` the controller is ``controller-<random>`` with a fresh
    key each run, registered as ephemeral: the router frees the id ``window_s`` after the
    controller has gone and its last task has ended (docs/PROTOCOL.md §4.4). With one, its key is kept like an agent's (see ``aicp.live.keys``:
    ``$AICP_KEY_DIR``, default ``~/.config/aicp/keys/<id>.key``), so a restarted
    controller can submit a task id again and get its stored outcome.
    ``identity`` or ``key_file`` override where the key comes from.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        controller_id: str | None = None,
        identity: Identity | None = None,
        *,
        key_file: str | os.PathLike[str] | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if identity is None:
            if controller_id is None and key_file is None:
                identity = Identity.generate()
            else:
                identity = identity_for(controller_id or "controller", key_file=key_file, key_dir=key_dir)
        super().__init__(url, controller_id, identity, **kwargs)  # without an id: a made-up, ephemeral one
        self.waiter = _ResultWaiter()

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def submit(self, method: str, obj: Any, timeout: float = 30.0, task_id: str | None = None) -> TaskResult:
        """Run one task; the verified ``TaskResult``, or ``errors.TaskError`` carrying the outcome's code.

        ``task_id`` makes the call idempotent: the same id submitted again gets the same outcome.
        """
        result = await super().submit(method, obj, timeout=timeout, task_id=task_id)
        if not isinstance(result, TaskResult):
            raise errors.LocalError(f"expected a TaskResult, got {type(result).__name__}")
        if result.method != method:
            raise errors.TaskError(errors.INVALID_MESSAGE, f"agent {result.agent_id} signed a result for {result.method!r}, not {method!r}", result.task_id)
        return result
