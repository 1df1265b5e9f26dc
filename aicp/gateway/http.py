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
runs, on the critical path of every request). Reading, flow control and closing are
the real transport's (``close`` sends what is held first; ``abort`` drops it).

The protocol also answers the gateway's hot path itself: a plain synchronous
``POST /tasks`` runs in the protocol's callbacks, with no ASGI task (see
``CoalescingHttpToolsProtocol``), and its keep-alive timeout uses one timer per
connection rather than one per request (``on_response_complete``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from aicp.gateway.submit import GatewayApp, Reply, TaskSubmission, asgi_messages

#: uvicorn releases (major, minor) whose httptools protocol internals the in-protocol ``POST /tasks``
#: was written and tested against (``_start_asgi_task``, ``RequestResponseCycle``'s fields, ``STATUS_LINE``).
#: With any other release every request takes the ASGI path, as it did before: slower, never wrong.
TESTED_UVICORN: Final = frozenset({(0, 54)})
IN_PROTOCOL: Final = (
    tuple(int(p) for p in uvicorn.__version__.split(".")[:2] if p.isdigit()) in TESTED_UVICORN
    and hasattr(HttpToolsProtocol, "_start_asgi_task")
)

log = logging.getLogger("aicp.gateway")


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

    def write_now(self, data: bytes) -> None:
        """Send ``data`` now, after whatever is held: a whole response needs no ``call_soon`` flush."""
        if self._held:
            self._held.append(data)
            self.flush()
        elif not self._transport.is_closing():
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:  # asked on every response (uvicorn) and every flush: not through __getattr__
        return self._transport.is_closing()

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
    """``HttpToolsProtocol`` writing through a ``CoalescingTransport``, answering a plain ``POST /tasks`` itself.

    uvicorn starts an asyncio task per request (``RequestResponseCycle.run_asgi``) when its
    headers are parsed; the request then waits a trip through the loop's ready queue, and
    the task, its coroutines and the ASGI calls around them, before the gateway sees it.
    For the gateway's hot path, a synchronous ``POST /tasks`` (on an app whose
    ``submission`` is a ``TaskSubmission``: ``GatewayApp``) with a declared body length of at
    most ``HIGH_WATER_LIMIT`` bytes, the task is not started: the request is held (uvicorn's
    cycle, without its task) until its body is in, then ``TaskSubmission.take`` checks and
    submits it from ``on_message_complete``, and its answer (``_answer``: the bytes uvicorn's
    ``send`` would write, in one write) leaves from the callback that ends the task, with no
    task and no coroutine on the way. Anything else
    (``Prefer: respond-async``, a chunked or larger body, ``Expect: 100-continue``, a
    pipelined request, other paths and methods, an app wrapped in middleware) gets its task
    as before. O(headers) per request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        submission = getattr(self.app, "submission", None)
        self.submission: TaskSubmission | None = submission if IN_PROTOCOL and isinstance(submission, TaskSubmission) and isinstance(self.app, GatewayApp) else None
        self._parsing_headers = False
        self._held: tuple[RequestResponseCycle, dict[bytes, bytes]] | None = None  # the POST /tasks waiting for its body
        self._keep_alive: asyncio.TimerHandle | None = None  # see on_response_complete
        self._idle_since: float | None = None  # loop time of the last response, if no byte arrived since

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = None  # its ASGI task would have read a disconnect and answered nothing
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._parsing_headers = self.submission is not None
        try:
            super().on_headers_complete()
        finally:
            self._parsing_headers = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Called from ``on_headers_complete`` for a request not queued behind another (and for queued ones later)."""
        if self._parsing_headers and app is self.app and self.submission is not None:
            scope = cycle.scope
            if scope["method"] == "POST" and scope["path"] == "/tasks" and not cycle.waiting_for_100_continue:
                headers = self.submission.hold(scope["headers"], HIGH_WATER_LIMIT)
                if headers is not None:
                    self._held = (cycle, headers)
                    return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held = self._held
        if held is None or held[0] is not self.cycle:
            return
        self._held = None
        cycle, headers = held
        body = bytes(cycle.body)
        cycle.body = bytearray()
        assert self.submission is not None
        self.submission.take(headers, body, lambda reply: self._answer(cycle, reply))

    def _answer(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        """Write ``reply`` as uvicorn's ``send`` writes a response with a ``content-length`` (the same bytes, its default
        headers first), in one ``write``, and complete the cycle as it does. Under flow control, with an access log, or
        with a header value uvicorn would refuse, uvicorn's ``send`` does it instead, from a task. Never raises."""
        try:
            if cycle.disconnected or cycle.response_started:
                return  # uvicorn's send drops an answer to a client that left
            status, ctype, body, extra = reply
            if cycle.flow.write_paused or cycle.access_log or any(HEADER_VALUE_RE.search(value) for _, value in extra):
                waiting = self.loop.create_task(self._send_later(cycle, reply))
                self.tasks.add(waiting)
                waiting.add_done_callback(self.tasks.discard)
                return
            out = [STATUS_LINE[status]]
            for name, value in cycle.default_headers:
                out += (name, b": ", value, b"\r\n")
            out += (b"content-type: ", ctype, b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n")
            for name, value in extra:
                out += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                out.append(b"connection: close\r\n")
            out += (b"\r\n", body)
            cycle.response_started = True
            cycle.waiting_for_100_continue = False
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.write_now(b"".join(out))
            else:
                transport.write(b"".join(out))
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()
        except Exception:
            log.exception("POST /tasks: the answer broke off")
            self.transport.close()

    async def _send_later(self, cycle: RequestResponseCycle, reply: Reply) -> None:
        try:
            for message in asgi_messages(reply):
                await cycle.send(message)  # type: ignore[arg-type]
        except Exception:
            log.exception("POST /tasks: the answer broke off")
            self.transport.close()

    def on_response_complete(self) -> None:
        """The whole response is written: send it now, in one write (the ``call_soon`` flush then finds nothing).

        Then uvicorn's ``on_response_complete``, but for its keep-alive timeout: uvicorn arms a
        timer after each response and cancels it when the next request's bytes arrive, a
        ``call_later`` and a ``cancel`` per request. Here one timer per connection stays armed
        and, when it fires, closes the connection only if it has been idle (no byte since its
        last response) for ``timeout_keep_alive``; else it is armed again for the rest. The
        same closes, at most one timer per connection per ``timeout_keep_alive``.
        """
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        self.server_state.total_requests += 1
        if transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._keep_alive is None:
            self._keep_alive = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_due)

    def _unset_keepalive_if_required(self) -> None:
        """Bytes arrived (or the connection ended): not idle. O(1), no timer touched."""
        self._idle_since = None
        super()._unset_keepalive_if_required()  # uvicorn's own timer, never armed here

    def _keep_alive_due(self) -> None:
        self._keep_alive = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # a request is under way: its response arms the timer again
        left = idle_since + self.timeout_keep_alive - self.loop.time()
        if left <= 0:
            self.timeout_keep_alive_handler()
        else:
            self._keep_alive = self.loop.call_later(left, self._keep_alive_due)
