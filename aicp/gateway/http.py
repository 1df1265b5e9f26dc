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
import time
from typing import Any, Final, cast

import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from aicp.gateway.legs import LEGS
from aicp.gateway.submit import GatewayApp, Reply, TaskSubmission, asgi_messages

#: uvicorn releases (major, minor) whose httptools protocol internals the in-protocol ``POST /tasks``
#: was written and tested against (the parser callbacks' use of ``url``, ``headers``, ``scope`` and ``cycle``,
#: ``RequestResponseCycle``'s fields and ``send``, ``STATUS_LINE``).
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


class _NoEvent:
    """What a ``LeanCycle`` has for uvicorn's per-request ``asyncio.Event``: nobody waits on it, so ``set`` does nothing."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT: Final = _NoEvent()


class LeanCycle:
    """A held ``POST /tasks`` in place of uvicorn's ``RequestResponseCycle``: its headers, its body, and the fields of a
    cycle that uvicorn's protocol reads or sets on the connection's current request (``connection_lost``, ``shutdown``,
    a pipelined request's ``on_headers_complete``, ``on_body``), with no scope dict, no ``asyncio.Event`` and no task."""

    __slots__ = ("body", "disconnected", "headers", "keep_alive", "raw_headers", "response_complete", "response_started")

    message_event: Final = _NO_EVENT  # connection_lost sets it

    def __init__(self, headers: dict[bytes, bytes], raw_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.headers = headers
        self.raw_headers = raw_headers  # as uvicorn's scope would carry them: for uvicorn's send, under flow control
        self.keep_alive = keep_alive  # shutdown() clears it: the answer then closes the connection
        self.body = bytearray()
        self.disconnected = False
        self.response_started = False
        self.response_complete = False


#: (uvicorn's default headers list, those headers as bytes): uvicorn makes a new list when its date header changes
_defaults: list[Any] = [None, b""]


def _default_header_bytes(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (``server``, ``date``) as they start every answer; joined once per list uvicorn makes (once a second)."""
    if _defaults[0] is not default_headers:
        _defaults[1] = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)
        _defaults[0] = default_headers
    return cast(bytes, _defaults[1])


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` writing through a ``CoalescingTransport``, answering a plain ``POST /tasks`` itself.

    uvicorn builds, for every request, an ASGI scope (a dict, with a copy of the app
    state) when the request begins, and a ``RequestResponseCycle`` with an
    ``asyncio.Event`` and an asyncio task (``RequestResponseCycle.run_asgi``) when its
    headers are parsed; the request then waits a trip through the loop's ready queue, and
    the task, its coroutines and the ASGI calls around them, before the gateway sees it.
    For the gateway's hot path none of that is made: a ``POST`` to exactly ``/tasks``,
    synchronous (no ``Prefer: respond-async``), with a declared body length of at most
    ``HIGH_WATER_LIMIT`` bytes, on an app whose ``submission`` is a ``TaskSubmission``
    (``GatewayApp``), not behind another request of its connection, with no ``root_path``
    or ``limit_concurrency`` configured, is held as a ``LeanCycle`` (its headers
    read once, ``TaskSubmission.hold``) until its body is in; then ``TaskSubmission.take``
    checks and submits it from ``on_message_complete``, and its answer (``_answer``: the
    bytes uvicorn's ``send`` would write, in one write) leaves from the callback that ends
    the task, with no task and no coroutine on the way. The scope is made only for a
    request that is not held (``on_headers_complete``), which then goes uvicorn's way:
    ``Prefer: respond-async``, a chunked or larger body, ``Expect: 100-continue``, a
    pipelined request, a query string, other paths and methods, an upgrade, an app
    wrapped in middleware. O(headers) per request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        submission = getattr(self.app, "submission", None)
        self.submission: TaskSubmission | None = submission if IN_PROTOCOL and isinstance(submission, TaskSubmission) and isinstance(self.app, GatewayApp) else None
        # the lean path's conditions that do not change per request (uvicorn's config): else every request goes uvicorn's way
        self._lean = self.submission is not None and not self.root_path and self.limit_concurrency is None
        self._keep_alive: asyncio.TimerHandle | None = None  # see on_response_complete
        self._idle_since: float | None = None  # loop time of the last response, if no byte arrived since

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None
        super().connection_lost(exc)  # a held request is marked disconnected: its answer is dropped, as uvicorn's send drops it

    def on_message_begin(self) -> None:
        if not self._lean:
            super().on_message_begin()
            return
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = None  # type: ignore[assignment]  # made in on_headers_complete unless the request is held

    def on_headers_complete(self) -> None:
        if self.scope is not None:  # not lean: uvicorn's way throughout
            super().on_headers_complete()
            return
        parser = self.parser
        cycle = self.cycle
        if (
            self.url == b"/tasks"
            and (cycle is None or cycle.response_complete)
            and not self.expect_100_continue
            and parser.get_method() == b"POST"
            and not parser.should_upgrade()
        ):
            assert self.submission is not None
            held = self.submission.hold(self.headers, HIGH_WATER_LIMIT)
            if held is not None:
                keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
                self.cycle = LeanCycle(held, self.headers, keep_alive)  # type: ignore[assignment]
                return
        # uvicorn's way: the scope its on_message_begin would have made, with the headers and URL read since
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is LeanCycle:
            if not cycle.response_complete:
                cycle.body += body  # at most the declared length, which hold() bounded
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not LeanCycle:
            super().on_message_complete()
            return
        if cycle.response_complete or cycle.response_started:
            return
        if LEGS is not None:
            LEGS.parsed = time.perf_counter()
        body = bytes(cycle.body)
        cycle.body = bytearray()
        assert self.submission is not None
        self.submission.take(cycle.headers, body, lambda reply: self._answer(cycle, reply))

    def _answer(self, cycle: LeanCycle, reply: Reply) -> None:
        """Write ``reply`` as uvicorn's ``send`` writes a response with a ``content-length`` (the same bytes, its default
        headers first), in one ``write``, and complete the request as it does. Under flow control, with an access log, or with
        a header value uvicorn would refuse, uvicorn's ``send`` does it instead, from a task. Never raises."""
        try:
            if cycle.disconnected or cycle.response_started:
                return  # uvicorn's send drops an answer to a client that left
            status, ctype, body, extra = reply
            if self.flow.write_paused or self.access_log or (extra and any(HEADER_VALUE_RE.search(value) for _, value in extra)):
                waiting = self.loop.create_task(self._send_later(cycle, reply))
                self.tasks.add(waiting)
                waiting.add_done_callback(self.tasks.discard)
                return
            out = [STATUS_LINE[status], _default_header_bytes(self.server_state.default_headers), b"content-type: ", ctype,
                   b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
            for name, value in extra:
                out += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                out.append(b"connection: close\r\n")
            out += (b"\r\n", body)
            cycle.response_started = True
            transport = self.transport
            if isinstance(transport, CoalescingTransport):
                transport.write_now(b"".join(out))
            else:
                transport.write(b"".join(out))
            cycle.response_complete = True
            if not cycle.keep_alive:
                self.transport.close()
            self.on_response_complete()
        except Exception:
            log.exception("POST /tasks: the answer broke off")
            self.transport.close()

    async def _send_later(self, cycle: LeanCycle, reply: Reply) -> None:
        """The answer through uvicorn's own ``RequestResponseCycle.send`` (it waits for the transport to drain), then the
        request is complete on this connection as uvicorn completes it."""
        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/tasks", "raw_path": b"/tasks", "query_string": b"",
                 "root_path": "", "scheme": self.scheme, "server": self.server, "client": self.client, "headers": cycle.raw_headers}
        real = RequestResponseCycle(scope=scope, transport=self.transport, flow=self.flow, logger=self.logger,  # type: ignore[arg-type]
                                    access_logger=self.access_logger, access_log=self.access_log, default_headers=self.server_state.default_headers,
                                    message_event=asyncio.Event(), expect_100_continue=False, keep_alive=cycle.keep_alive, on_response=self._lean_sent(cycle))
        real.more_body = False
        try:
            for message in asgi_messages(reply):
                await real.send(message)  # type: ignore[arg-type]
        except Exception:
            log.exception("POST /tasks: the answer broke off")
            self.transport.close()

    def _lean_sent(self, cycle: LeanCycle) -> Any:
        def done() -> None:
            cycle.response_started = cycle.response_complete = True
            self.on_response_complete()

        return done

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


class LegsHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """``aicp gateway``'s protocol when ``AICP_GATEWAY_LEGS`` is set (aicp.gateway.legs): also notes when bytes arrive, before
    they are parsed. A class of its own, so that without the variable ``data_received`` is uvicorn's, untouched."""

    def data_received(self, data: bytes) -> None:
        if LEGS is not None:
            LEGS.arrived = time.perf_counter()
        super().data_received(data)
