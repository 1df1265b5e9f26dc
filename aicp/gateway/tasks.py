"""What the gateway remembers about each task: its state, its events and its one outcome.

A ``GatewayTask`` is created when a request is accepted and ends exactly once
(``finish``): with the agent's signed result, with the router's coded error, or
canceled by an A2A ``CancelTask``. Whatever arrives after the end is ignored, so an
HTTP or A2A caller never sees two answers.

``TaskStore`` keeps the running tasks in a dict (bounded by ``max_running``: a
new task beyond it is refused with ``overloaded``) and the finished ones in
insertion order, bounded by ``max_kept`` (the oldest are forgotten first). Every
operation is O(1).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
from msgspec import Raw

from aicp.signing import CONTEXT

State = Literal["accepted", "submitted", "completed", "failed", "canceled"]
TERMINAL: Final = frozenset({"completed", "failed", "canceled"})

#: Event names on ``GET /tasks/{id}/events`` (see docs/GATEWAY.md for where each comes from).
ACCEPTED: Final = "accepted"
SUBMITTED: Final = "submitted"
RESUBMITTED: Final = "resubmitted"
DISPATCHED: Final = "dispatched"  # from the router's progress notices
RETRIED: Final = "retried"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELED: Final = "canceled"


class Outcome(msgspec.Struct, frozen=True):
    """A task's one outcome. ``ok``: the agent's verified result; else a coded error.

    For a result, ``body`` holds the result body exactly as the agent signed it and
    ``signature`` the envelope's base64 signature: ``CONTEXT + body`` is what it covers.
    """

    ok: bool
    code: str = ""
    message: str = ""
    agent_id: str | None = None
    agent_key: str | None = None
    signature: str | None = None
    body: bytes | None = None
    payload: Raw | None = None


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """One state change of a task, as streamed to HTTP callers."""

    event: str
    task_id: str
    ts: float
    code: str | None = None
    agent_id: str | None = None


class ResultView(msgspec.Struct):
    """A completed task as ``GatewayTask.view`` shows it, in its field order: encoded as one struct, not a dict built per answer.

    ``signed_bytes`` holds ``CONTEXT + body``; msgspec writes ``bytes`` as padded standard base64, the text
    ``view`` gives it. ``GatewayTask.view_json`` gives the same bytes as encoding ``view()`` (tested).
    """

    id: str
    method: str
    state: str
    created: float
    result: Raw | None
    agent_id: str | None
    agent_key: str | None
    signature: str | None
    signed_bytes: bytes


_view_encoder: Final = msgspec.json.Encoder()


#: ``GatewayTask.done`` of every ended task: one event, set, shared (``wait()`` on it returns at once).
_ENDED: Final = asyncio.Event()
_ENDED.set()


class GatewayTask:
    """One accepted task. ``done`` is set once, when the outcome is known.

    A finished task stays in ``TaskStore.finished`` (up to ``max_kept`` of them), so it
    holds as few objects the garbage collector tracks as it can: two (itself and
    ``events``). Its ``done`` event exists only while someone may wait for it, and
    ``watchers`` and ``unverified`` are the empty tuple until they get a first item.
    With six tracked objects per kept task, the gateway's full collections, which walk
    them all, paused its loop for 90 ms after about 2,000 tasks (the 50+ ms p99 of
    ``aicp bench --via gateway``; see also ``aicp gateway``'s ``gc.freeze``).

    ``unverified`` holds the router's progress notices that arrived while nobody
    watched the task, as (position in ``events``, arrival time, frame bytes), not yet
    verified: ``GatewayLink.settle`` verifies them and puts them in ``events`` before
    anyone reads those (see ``GatewayLink._defer``).
    """

    __slots__ = (
        "_done",
        "context_id",
        "created",
        "deadline",
        "digest",
        "events",
        "id",
        "method",
        "on_end",
        "outcome",
        "owner",
        "payload",
        "progress",
        "state",
        "timeout_ms",
        "unverified",
        "watchers",
    )

    def __init__(
        self, task_id: str, method: str, payload: Raw, timeout_ms: float, owner: str, digest: bytes | None, context_id: str = "", progress: bool = True
    ) -> None:
        self.id = task_id
        self.progress = progress  # its caller may watch it run: ask the router for its progress notices (GatewayLink)
        self.method = method
        self.payload = payload
        self.timeout_ms = timeout_ms
        self.owner = owner
        self.digest = digest
        self.context_id = context_id
        self.created = time.time()
        self.state: State = "accepted"
        self.events: list[Event] = [Event(ACCEPTED, task_id, self.created)]
        self.outcome: Outcome | None = None
        self._done: asyncio.Event | None = None
        self.watchers: list[asyncio.Queue[Event]] | tuple[()] = ()
        self.unverified: list[tuple[int, float, bytes]] | tuple[()] = ()
        self.deadline = 0  # the number of its entry in ``GatewayLink.deadlines`` (0: none yet)
        self.on_end: Callable[[], None] | None = None  # called once, by ``TaskStore.finish`` as soon as the outcome is set (the synchronous POST answers from it)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    @property
    def done(self) -> asyncio.Event:
        """Set once the task has ended; made on first use (an ended task answers with one shared, set event)."""
        if self._done is None:
            if self.ended:
                return _ENDED
            self._done = asyncio.Event()
        return self._done

    def set_done(self) -> None:
        """Wake whoever waits for the outcome and let the event go."""
        if self._done is not None:
            self._done.set()
            self._done = None

    def record(self, name: str, **extra: Any) -> None:
        event = Event(name, self.id, time.time(), **extra)
        self.events.append(event)
        for queue in self.watchers:
            queue.put_nowait(event)

    def watch(self) -> asyncio.Queue[Event]:
        """A queue that gets every event from now on (read ``events`` first for the past ones)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if isinstance(self.watchers, tuple):
            self.watchers = []
        self.watchers.append(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[Event]) -> None:
        if isinstance(self.watchers, list) and queue in self.watchers:
            self.watchers.remove(queue)
            if not self.watchers:
                self.watchers = ()

    def view_json(self) -> bytes:
        """``view()`` as JSON; a completed task's through ``ResultView`` (its answer is the gateway's hot path)."""
        o = self.outcome
        if o is not None and o.ok and o.body is not None:
            return _view_encoder.encode(ResultView(self.id, self.method, self.state, self.created, o.payload, o.agent_id, o.agent_key, o.signature, CONTEXT + o.body))
        return _view_encoder.encode(self.view())

    def view(self) -> dict[str, Any]:
        """The task as ``GET /tasks/{id}`` shows it (the result payload stays raw JSON)."""
        out: dict[str, Any] = {"id": self.id, "method": self.method, "state": self.state, "created": self.created}
        o = self.outcome
        if o is None:
            return out
        if o.ok:
            assert o.body is not None
            out["result"] = o.payload
            out["agent_id"] = o.agent_id
            out["agent_key"] = o.agent_key
            out["signature"] = o.signature
            out["signed_bytes"] = base64.b64encode(CONTEXT + o.body).decode("ascii")
        else:
            out["error"] = {"code": o.code, "message": o.message}
        return out


class TaskStore:
    """Running tasks by id (bounded by ``max_running``) and the last ``max_kept`` finished ones."""

    def __init__(self, max_running: int = 10_000, max_kept: int = 100_000) -> None:
        self.max_running = max_running
        self.max_kept = max_kept
        self.running: dict[str, GatewayTask] = {}
        self.finished: OrderedDict[str, GatewayTask] = OrderedDict()

    def __len__(self) -> int:
        return len(self.running) + len(self.finished)

    def get(self, task_id: str) -> GatewayTask | None:
        return self.running.get(task_id) or self.finished.get(task_id)

    @property
    def full(self) -> bool:
        return len(self.running) >= self.max_running

    def add(self, task: GatewayTask) -> None:
        self.running[task.id] = task

    def finish(self, task: GatewayTask, outcome: Outcome, state: State) -> bool:
        """End ``task`` with ``outcome``; False (and nothing changes) if it had already ended."""
        if task.ended:
            return False
        task.outcome = outcome
        task.state = state
        hook = task.on_end
        if hook is not None:  # first: the caller's answer is on the critical path, the bookkeeping below is not
            task.on_end = None
            hook()  # must not raise (TaskSubmission's catch everything); nothing else can run before the rest below
        if outcome.ok:
            task.record(COMPLETED, agent_id=outcome.agent_id)
        elif state == "canceled":
            task.record(CANCELED)
        else:
            task.record(FAILED, code=outcome.code)
        task.set_done()
        self.running.pop(task.id, None)
        self.finished[task.id] = task
        while len(self.finished) > self.max_kept:
            self.finished.popitem(last=False)
        return True
