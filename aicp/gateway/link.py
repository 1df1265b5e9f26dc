"""The gateway's one long-lived controller connection to the router.

``GatewayLink`` is a controller (``PeerClient`` with ``role="controller"``) that
does not wait for its tasks itself: each outcome frame that arrives is verified
and ends the matching ``GatewayTask`` in the ``TaskStore``, keeping the agent's
signature and the exact signed body bytes for the HTTP caller.

The connection reconnects with exponential backoff and full jitter
(``PeerClient.connect_with_retry``). A task accepted while the router is away is
sent once the connection is back; after a reconnect every running task is sent
again under the same id, and the router answers with its one outcome (running:
when it ends; finished: the stored outcome frame), never a second execution.
The router's ``progress`` notices show in a task's events when it was dispatched to
an agent and when it was retried on another. Which tasks get them is ``progress``:
``"async"`` (the default) asks for them per task (the task body's ``progress: true``,
docs/PROTOCOL.md §5) only on tasks whose caller learns the id before the outcome
(``Prefer: respond-async``, A2A streaming or ``returnImmediately``), since only those
can be watched while they run; a task answered synchronously gets none, which spares
the router a signature and a frame and this process a wake-up on the critical path.
``"all"`` registers asking for notices on every task (the field is never sent, as
before it existed); ``"none"`` asks for none. A notice for a task nobody is watching is
kept unverified (``_defer``) and verified only when someone reads the task's events
(``settle``): the Ed25519 check is most of a notice's cost, and most notices are
never read. Nothing uses a notice before it is verified; one that fails is dropped
and counted in ``rejected_frames``, as it would have been on arrival.

Each task also has a local deadline (its timeout plus ``grace_s``) so it ends
with ``timeout`` even if the router never comes back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aicp import errors
from aicp.gateway.legs import LEGS
from aicp.gateway.tasks import RESUBMITTED, SUBMITTED, Event, GatewayTask, Outcome, TaskStore
from aicp.live.client import PeerClient
from aicp.messages import Error, Goaway, Progress, Result, decode_body, decode_frame
from aicp.signing import Identity, decode_public_key, decode_signature, verify

log = logging.getLogger("aicp.gateway.link")

#: Local code (HTTP only): an Idempotency-Key was first used for a task of another method.
IDEMPOTENCY_CONFLICT: Final = "idempotency-conflict"

#: ``GatewayLink(progress=...)``: which tasks get the router's progress notices (see the module docstring).
PROGRESS_MODES: Final = ("async", "all", "none")
ASYNC_PROGRESS: Final = "async"

#: How a progress notice's frame reads (the body comes last in the envelope, its tag first); other frames skip ``_defer``.
_PROGRESS_MARK: Final = b'"body":{"type":"progress"'


class Deadlines:
    """The local deadlines of the running tasks, on one loop timer (a timer per task cost more CPU than its task's frame).

    A heap of (when, number, task id) and a timer for the earliest entry. A task that
    ends is not looked for: its entry is dropped when it reaches the top and its task is
    no longer running under that number (``GatewayTask.deadline``). So the timer fires about
    once per deadline span (timeout plus grace) at a steady load, not once per task. ``add``
    O(log n); each entry is dropped or expires once, O(log n). n: the entries whose time has
    not come, at most the submission rate times the deadline span; each holds a float,
    an int and a str, which the garbage collector does not track.
    """

    def __init__(self, store: TaskStore, expire: Callable[[GatewayTask], None]) -> None:
        self.store = store
        self.expire = expire
        self.heap: list[tuple[float, int, str]] = []
        self._numbers = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def add(self, task: GatewayTask, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay_s
        task.deadline = number = next(self._numbers)
        heapq.heappush(self.heap, (when, number, task.id))
        if self._timer is None or when < self._timer_at:
            self._arm(loop, when)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self.heap
        running = self.store.running
        while heap:
            when, number, task_id = heap[0]
            task = running.get(task_id)
            if task is None or task.deadline != number:  # ended (or another task of that id since)
                heapq.heappop(heap)
                continue
            if when > now:
                break
            heapq.heappop(heap)
            try:
                self.expire(task)
            except Exception:  # the other deadlines still come
                log.exception("expiring task %s failed", task_id)
        if heap:
            self._arm(loop, heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def default_gateway_id(identity: Identity) -> str:
    """A controller id tied to the key: a restarted gateway with the same key file finds its tasks again."""
    return "gateway-" + identity.public_key[:6].hex()


class GatewayLink(PeerClient):
    """The controller connection that ends ``TaskStore`` tasks as outcomes arrive."""

    #: a task's frame leaves as soon as its request is checked, unless others went out in this loop iteration
    #: (then it joins their batch): the HTTP caller waits on it, and at 500 tasks/s a request is mostly alone
    eager_writes = True

    def __init__(
        self, server_url: str, identity: Identity, store: TaskStore, peer_id: str | None = None, grace_s: float = 2.0, progress: bool | str = ASYNC_PROGRESS, **kwargs: Any
    ) -> None:
        mode = {True: "all", False: "none"}.get(progress, progress) if isinstance(progress, bool) else progress
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress must be one of {', '.join(PROGRESS_MODES)}, not {progress!r}")
        super().__init__(server_url, peer_id or default_gateway_id(identity), identity, role="controller", progress=mode == "all", **kwargs)
        self.progress_mode = mode
        self.store = store
        self.grace_s = grace_s
        self.on_registered: Callable[[], None] | None = None  # called on each (re)registration, before resubmitting
        self._runner: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[bool]] = set()  # send_soon's frames waiting for room on the connection
        self.deadlines = Deadlines(store, self._expire)

    async def start(self) -> None:
        """Connect in the background (retrying until the router answers) and keep reading outcomes."""
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await self.connect_with_retry()
        await self.listen()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ tasks
    def track(self, task: GatewayTask, deadline: bool = True) -> None:
        """Start tracking ``task`` (synchronous: no other request can slip in between) and its local deadline; ``deadline``
        False: ``send_soon`` arms it once the task's frame is written (a timer less before the frame leaves)."""
        self.store.add(task)
        if deadline:
            self._arm(task)

    def _arm(self, task: GatewayTask) -> None:
        self.deadlines.add(task, task.timeout_ms / 1000.0 + self.grace_s)

    async def send(self, task: GatewayTask) -> None:
        """Send a tracked task now if connected (else it goes after the next registration)."""
        await self._send_task(task, SUBMITTED)

    def send_soon(self, task: GatewayTask) -> None:
        """``send`` for a caller that does not wait: the frame joins this iteration's writes at once, as ``send``'s
        does, unless the connection is under flow control; then a task of its own awaits room for it. Arms the task's
        local deadline if ``track`` left it to this."""
        try:
            frame = self._task_frame(task)
            sent = self._send_at_once(frame)
            if sent is None:
                waiting = asyncio.get_running_loop().create_task(self._send_frame(task, frame, SUBMITTED))
                self._sending.add(waiting)
                waiting.add_done_callback(self._sending.discard)
            elif sent:
                self._submitted(task, SUBMITTED)
            if LEGS is not None and sent:
                LEGS.frame_out(task.id, self._batch is not None and not self._batch.pending)
        finally:
            if not task.deadline and not task.ended:
                self._arm(task)

    def cancel(self, task: GatewayTask) -> bool:
        """End a running task as canceled here; the router's outcome, when it comes, is dropped."""
        return self.store.finish(task, Outcome(False, "canceled", "canceled by the caller"), "canceled")

    def _task_frame(self, task: GatewayTask) -> bytes:
        ask = True if self.progress_mode == ASYNC_PROGRESS and task.progress else None  # None: as registered (the field is left out)
        return self.session.task_frame(task.method, task.payload, time.time(), task.id, task.timeout_ms, ask)[1]

    async def _send_task(self, task: GatewayTask, event: str) -> bool:
        return await self._send_frame(task, self._task_frame(task), event)

    async def _send_frame(self, task: GatewayTask, frame: bytes, event: str) -> bool:
        if not await self._send(frame):
            return False
        self._submitted(task, event)
        return True

    @staticmethod
    def _submitted(task: GatewayTask, event: str) -> None:
        if not task.ended:
            if task.state == "accepted":
                task.state = "submitted"
            task.record(event)

    def _expire(self, task: GatewayTask) -> None:
        self.store.finish(task, Outcome(False, errors.TIMEOUT, f"no outcome from the router within {task.timeout_ms:g} ms"), "failed")

    # ------------------------------------------------------------------ frames
    def _frame(self, data: bytes) -> None:
        if LEGS is not None:
            LEGS.result_in = time.perf_counter()
        if _PROGRESS_MARK in data and self._defer(data):
            return
        try:
            rec = self.session.receive(data, time.time())
        except errors.ProtocolError as exc:
            self.rejected_frames += 1
            log.warning("%s: refused a frame: %s", self.peer_id, exc)
            return
        body = rec.body
        if isinstance(body, Result):
            task = self.store.running.get(body.task_id)
            if task is None:
                return  # late, repeated, or for a task canceled here
            if body.method != task.method:
                self._conflict(task, body.method)
                return
            if not body.ok:  # the router retries these and never forwards one; be safe anyway
                self.store.finish(task, Outcome(False, errors.AGENT_FAILED, body.reason), "failed")
                return
            outcome = Outcome(True, agent_id=body.sender, agent_key=rec.key, signature=rec.sig, body=bytes(rec.signed), payload=body.payload)
            self.store.finish(task, outcome, "completed")
        elif isinstance(body, Error):
            task = self.store.running.get(body.task_id) if body.task_id is not None else None
            if task is None:
                if body.task_id is None:
                    self.errors.append(body)
                    log.warning("%s: router error %s: %s", self.peer_id, body.code, body.message)
                return
            if body.method is not None and body.method != task.method:
                self._conflict(task, body.method)
                return
            self.store.finish(task, Outcome(False, body.code, body.message), "failed")
        elif isinstance(body, Progress):
            task = self.store.running.get(body.task_id)
            if task is not None and body.method == task.method:
                task.record(body.state, agent_id=body.agent)
        elif isinstance(body, Goaway):
            self.goaway = body
            log.info("%s: router is draining (%s, %.1f s)", self.peer_id, body.reason, body.drain_s)

    def _defer(self, data: bytes) -> bool:
        """Keep a router progress notice for a running, unwatched task of its method, unverified; False: handle it now.

        The frame is decoded (strictly) but not verified; it is bound here to the key
        the router registered with, and only its signature is left for ``settle``.
        """
        try:
            frame = decode_frame(data)
            body = decode_body(frame.body)
        except errors.ProtocolError:
            return False  # refused and counted by the full path
        if not isinstance(body, Progress) or frame.sender != self.session.router_id or frame.key != self.session.router_key or body.sender != frame.sender:
            return False
        task = self.store.running.get(body.task_id)
        if task is None or task.watchers or body.method != task.method:
            return False
        if isinstance(task.unverified, tuple):
            task.unverified = []
        task.unverified.append((len(task.events), time.time(), data))
        return True

    def settle(self, task: GatewayTask) -> None:
        """Verify the notices ``_defer`` kept for ``task``; each good one joins ``events`` where it arrived. O(kept notices)."""
        kept = task.unverified
        if not kept:
            return
        task.unverified = ()
        shift = 0
        for index, ts, data in kept:
            frame = decode_frame(data)  # decoded once already: it does not fail now
            try:
                verify(decode_public_key(frame.key), bytes(frame.body), decode_signature(frame.sig))
            except errors.ProtocolError as exc:
                self.rejected_frames += 1
                log.warning("%s: refused a progress notice for %s: %s", self.peer_id, task.id, exc)
                continue
            body = decode_body(frame.body)
            assert isinstance(body, Progress)
            task.events.insert(index + shift, Event(body.state, task.id, ts, agent_id=body.agent))
            shift += 1

    def _conflict(self, task: GatewayTask, first_method: str) -> None:
        msg = f"this Idempotency-Key was first used for a {first_method!r} task, not {task.method!r}"
        self.store.finish(task, Outcome(False, IDEMPOTENCY_CONFLICT, msg), "failed")

    async def _on_ready(self) -> None:
        if self.on_registered is not None:
            self.on_registered()
        for task in list(self.store.running.values()):
            if not await self._send_task(task, SUBMITTED if task.state == "accepted" else RESUBMITTED):
                return

    async def _on_close(self) -> None:
        self.deadlines.close()
        for task in list(self.store.running.values()):
            self.store.finish(task, Outcome(False, errors.SHUTTING_DOWN, "the gateway is shutting down"), "failed")
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
