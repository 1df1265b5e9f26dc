"""An in-process driver: router and peers wired through memory, time stepped by hand.

It runs the exact frames and signatures of live mode with no sockets and no
event loop, so tests and the demo can script whole conversations::

    hub = InProcessHub(RouterProtocol(Identity.generate(), Router(...)))
    agent = hub.connect(PeerSession(ident, "a1", "agent", ["echo"]), handler=lambda task: {"ok": 1})
    ctl = hub.connect(PeerSession(ident2, "c1", "controller"))
    tid = ctl.submit("echo", {"x": 1})
    hub.run_until_idle()
    ctl.outcomes[tid]     # the verified Result or Error body
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from aicp import errors
from aicp.messages import Error, Result, Task, payload
from aicp.peer import PeerSession, Received
from aicp.protocol import Close, RouterProtocol, Send

TaskHandler = Callable[[Task], Any]
"""An in-process agent's handler: it gets the whole verified ``Task`` (the live ``aicp.live.handlers.Handler`` gets only the payload)."""


class Endpoint:
    """One peer connected to the hub. Agents answer tasks with ``handler`` (auto, or held for the test)."""

    def __init__(self, hub: InProcessHub, conn: int, session: PeerSession, handler: TaskHandler | None, auto: bool) -> None:
        self.hub = hub
        self.conn = conn
        self.session = session
        self.handler = handler
        self.auto = auto
        self.closed: tuple[int, str] | None = None
        self.inbox: list[Received] = []  # every verified frame, in order
        self.rejected: list[errors.ProtocolError] = []  # frames this peer refused
        self.held: deque[Received] = deque()  # tasks waiting for answer() when auto is False
        self.outcomes: dict[str, Result | Error] = {}
        self.outcome_count: dict[str, int] = {}

    def send(self, data: bytes) -> None:
        self.hub.to_router(self.conn, data)

    def submit(self, method: str, obj: Any, task_id: str | None = None, timeout_ms: float | None = None, progress: bool | None = None) -> str:
        tid, frame = self.session.task_frame(method, payload(obj), self.hub.now, task_id, timeout_ms, progress)
        self.send(frame)
        return tid

    def answer(self, received: Received, ok: bool = True, obj: Any = None, reason: str = "") -> bytes:
        assert isinstance(received.body, Task)
        frame = self.session.result_frame(received.body, payload(obj), self.hub.now, ok, reason)
        self.send(frame)
        return frame

    def heartbeat(self) -> None:
        self.send(self.session.heartbeat_frame(self.hub.now))

    def on_frame(self, data: bytes) -> None:
        try:
            rec = self.session.receive(data, self.hub.now)
        except errors.ProtocolError as exc:
            self.rejected.append(exc)
            return
        self.inbox.append(rec)
        body = rec.body
        if isinstance(body, Task):
            if self.auto and self.handler is not None:
                try:
                    self.answer(rec, True, self.handler(body))
                except Exception as exc:  # a handler failure becomes a signed error result
                    self.answer(rec, False, None, f"{type(exc).__name__}: {exc}")
            else:
                self.held.append(rec)
        elif isinstance(body, Result) or (isinstance(body, Error) and body.task_id is not None):
            key = body.task_id
            assert key is not None
            self.outcomes[key] = body
            self.outcome_count[key] = self.outcome_count.get(key, 0) + 1


class InProcessHub:
    """Routes frames between a ``RouterProtocol`` and in-memory endpoints, in FIFO order."""

    def __init__(self, proto: RouterProtocol, now: float = 1_000_000.0) -> None:
        self.proto = proto
        self.now = now
        self.endpoints: dict[int, Endpoint] = {}
        self._queue: deque[tuple[str, int, bytes]] = deque()  # ("router"|"peer"|"close", conn, data)
        self._closes: dict[int, tuple[int, str]] = {}
        self._next_conn = 0
        self.sent_to_peers = 0

    def connect(self, session: PeerSession, handler: TaskHandler | None = None, auto: bool = True, register: bool = True) -> Endpoint:
        self._next_conn += 1
        conn = self._next_conn
        ep = Endpoint(self, conn, session, handler, auto)
        self.endpoints[conn] = ep
        session.connection_made()
        self._apply(self.proto.connection_made(conn, self.now))
        self.run_until_idle()
        if register:
            ep.send(session.register_frame(self.now))
            self.run_until_idle()
        return ep

    def disconnect(self, ep: Endpoint) -> None:
        if ep.conn in self.endpoints:
            del self.endpoints[ep.conn]
            self._apply(self.proto.connection_lost(ep.conn, self.now))

    def to_router(self, conn: int, data: bytes) -> None:
        self._queue.append(("router", conn, data))

    def advance(self, dt: float) -> None:
        """Move time forward, firing every router deadline on the way."""
        target = self.now + dt
        self.run_until_idle()
        while True:
            deadline = self.proto.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self._apply(self.proto.on_timer(self.now))
            self.run_until_idle()
        self.now = target
        self.run_until_idle()

    def run_until_idle(self, limit: int = 1_000_000) -> None:
        for _ in range(limit):
            if not self._queue:
                return
            where, conn, data = self._queue.popleft()
            if where == "router":
                if conn in self.endpoints:
                    self._apply(self.proto.frame_received(conn, data, self.now))
            elif where == "close":
                ep = self.endpoints.pop(conn, None)
                if ep is not None:
                    ep.closed = self._closes.pop(conn)
                    self._apply(self.proto.connection_lost(conn, self.now))
            else:
                ep = self.endpoints.get(conn)
                if ep is not None:
                    self.sent_to_peers += 1
                    ep.on_frame(data)
        raise RuntimeError("in-process hub did not go idle")

    def _apply(self, outputs: list[Send | Close]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self._queue.append(("peer", out.conn, out.data))
            elif out.conn not in self._closes:  # closes after the frames sent before them, like a socket
                self._closes[out.conn] = (out.code, out.reason)
                self._queue.append(("close", out.conn, b""))
