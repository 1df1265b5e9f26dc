"""A load-generator process for ``aicp bench --via gateway``: ``POST /tasks`` over keep-alive HTTP/1.1.

The twin of ``loadgen`` (same arguments, same ``.npz`` samples, same open- and
closed-loop rules), so the orchestrator summarises both the same way and the two
transports are compared on one footing. The HTTP client is a small asyncio protocol
rather than a general library, so the client's own cost stays small next to the
gateway's. Both generators stop a task's clock when the client holds a verified result:
the WebSocket one after its own signature check (a controller has no one else to check
for it), this one when the answer arrives, since the gateway checked the signature before
answering. Every 200 answer is also verified here, after its time is taken, as an HTTP
caller who does not trust the gateway would (the README's five lines): the agent's
signature over the signed bytes, and the task id inside them. A wrong one counts as a
failure, never as a result.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np

from aicp.lab.bench.loadgen import EARLY_S, PENDING, Recorder, poisson_gaps
from aicp.live.loop import run_async
from aicp.signing import CONTEXT, decode_public_key, verify


class _Answer(msgspec.Struct):
    id: str = ""
    signed_bytes: str = ""
    signature: str = ""
    agent_key: str = ""
    code: str = ""


_decode = msgspec.json.Decoder(_Answer).decode


#: ``HttpConn.start``'s ``on_answer``: (connection, status, answer body, arrival time), or status -1 and an empty body if the
#: connection failed before the whole answer came.
OnAnswer = Callable[["HttpConn", int, bytes, float], None]


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time.

    A protocol, not asyncio streams: an answer is parsed in ``data_received`` and its
    arrival time (``done_at``) taken there, in the same callback as the WebSocket load
    generator takes its own (aicp.live.inbound; after its signature check). With ``on_answer`` the answer is handed over in that same callback (the
    open loop: no future and no task per request, as the WebSocket generator has none);
    without, a future gets it. O(answer size) per answer.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.on_answer: OnAnswer | None = None  # the request in flight's, if it was started with one
        self.closed = False
        self.done_at = 0.0  # clock() when the last answer was complete

    opened = 0  # connections opened by this process (``meta["connections"]``)

    @classmethod
    async def open(cls, host: str, port: int, clock: Callable[[], float] = time.perf_counter) -> HttpConn:
        _, conn = await asyncio.get_running_loop().create_connection(lambda: cls(clock), host, port)
        HttpConn.opened += 1
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is one, without inheriting from it

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        on_answer = self.on_answer
        if on_answer is not None:
            got = self._answer()
            if got is not None:
                self.on_answer = None
                if isinstance(got, Exception):
                    self._failed(on_answer)
                else:
                    on_answer(self, got[0], got[1], self.done_at)
            return
        if waiter is None or waiter.done():
            return
        got = self._answer()
        if isinstance(got, Exception):
            waiter.set_exception(got)
        elif got is not None:
            waiter.set_result(got)

    def _failed(self, on_answer: OnAnswer) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        on_answer(self, -1, b"", self.clock())

    def _answer(self) -> tuple[int, bytes] | Exception | None:
        """The whole answer at the head of the buffer, taken out of it (its arrival time in ``done_at``); None if it is not all in."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        try:
            lines = bytes(self.buf[:end]).split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
        except (ValueError, IndexError) as exc:
            return ValueError(f"bad HTTP answer: {exc}")
        total = end + 4 + length
        if len(self.buf) < total:
            return None
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        self.done_at = self.clock()
        return status, body

    def eof_received(self) -> bool:
        self.closed = True
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        on_answer = self.on_answer
        if on_answer is not None:
            self.on_answer = None
            on_answer(self, -1, b"", self.clock())
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(asyncio.IncompleteReadError(bytes(self.buf), None))

    def start(self, head: bytes, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send ``head`` (up to ``Content-Length: ``) and ``body`` now; the future gets (status, answer body) once it has all arrived."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the server closed this connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        return self.waiter

    def send(self, request: bytes, on_answer: OnAnswer) -> None:
        """Send a whole ``request`` now; ``on_answer`` is called once, from ``data_received`` when the answer is all in
        (or when the connection fails first). Raises ``ConnectionResetError`` (and calls nothing) if it is already closed."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the server closed this connection")
        self.waiter = None
        self.on_answer = on_answer
        self.transport.write(request)

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        return await self.start(head, body)

    def usable(self) -> bool:
        """False once the server has closed this idle connection (uvicorn does after 5 s idle, its keep-alive timeout)."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def check(status: int, data: bytes) -> tuple[str, str | None]:
    """(outcome code, task id); a 200 counts as ``ok`` only once its signature verifies."""
    try:
        ans = _decode(data)
    except msgspec.DecodeError:
        return f"http-{status}", None
    if status != 200:
        return ans.code or f"http-{status}", ans.id or None
    signed = base64.b64decode(ans.signed_bytes)
    verify(decode_public_key(ans.agent_key), signed[len(CONTEXT) :], base64.b64decode(ans.signature))
    if not signed.startswith(CONTEXT) or f'"task_id":"{ans.id}"'.encode() not in signed:
        raise ValueError("signed bytes do not name this task")
    return "ok", ans.id


async def run_loadgen(args: argparse.Namespace) -> dict[str, Any]:
    clock = time.perf_counter
    host, _, port_text = args.url.removeprefix("http://").rstrip("/").partition(":")
    port = int(port_text or 80)
    head = (f"POST /tasks HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n" + (f"Authorization: Bearer {args.token}\r\n" if args.token else "") + "Content-Length: ").encode()
    body = json.dumps({"method": args.method, "payload": {"text": "x" * max(0, args.payload_bytes)}, "timeout_ms": args.task_timeout * 1000.0}).encode()
    rec = Recorder()
    verify_failures = 0
    idle: list[HttpConn] = []
    seq = 0
    task_of: dict[str, str] = {}  # request key -> the task id its answer named (to join the gateway's legs)
    waited_open: set[int] = set()  # requests (recorder index) that waited for a new connection

    def new_request(intended: float) -> str:
        """The recorder's key of the next request, recorded as sent now (the gateway names the task; this tracks the request)."""
        nonlocal seq
        seq += 1
        key = f"req-{seq}"
        rec.new(key, intended, clock())
        return key

    def record_answer(key: str, status: int, data: bytes, at: float) -> None:
        """Check the answer to ``key`` (arrived at ``at``) and record its outcome; a bad signature counts in ``verify_failures``."""
        nonlocal verify_failures
        try:
            code, task_id = check(status, data)
        except Exception:
            verify_failures += 1
            code, task_id = "verify-failed", None
        if task_id is not None:
            task_of[key] = task_id
        rec.finish(key, at, code)

    def begin(intended: float, conn: HttpConn) -> tuple[str, HttpConn, asyncio.Future[tuple[int, bytes]]] | None:
        """Send one request on ``conn`` now; None if it failed at once (recorded as a connection error)."""
        key = new_request(intended)
        try:
            return key, conn, conn.start(head, body)
        except OSError:
            rec.finish(key, clock(), "connection-error")
            conn.close()
            return None

    async def one(intended: float, conn: HttpConn | None = None) -> HttpConn | None:
        conn = conn or idle_conn() or await HttpConn.open(host, port)
        started = begin(intended, conn)
        return None if started is None else await settle(*started)

    def idle_conn() -> HttpConn | None:
        """The most recently used idle connection; one the server has closed meanwhile is dropped."""
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def settle(key: str, conn: HttpConn, answer: asyncio.Future[tuple[int, bytes]]) -> HttpConn | None:
        """Wait for ``key``'s answer on ``conn``, check it and record it; ``conn`` again if it can be reused."""
        try:
            status, data = await answer
        except (OSError, asyncio.IncompleteReadError, ValueError):
            rec.finish(key, clock(), "connection-error")
            conn.close()
            return None
        record_answer(key, status, data, conn.done_at)  # when the answer arrived, not when this task woke up
        return conn

    if args.rate:
        # The pool a keep-alive client holds, opened before the clock starts (the WebSocket generator's one connection is
        # open before it too): a request that finds every connection busy still opens one more, and waits for it (counted).
        idle.extend(await asyncio.gather(*(HttpConn.open(host, port) for _ in range(max(0, args.connections)))))
    cpu0 = time.process_time()
    start = clock() + 0.05
    end = start + args.warmup + args.duration
    if args.rate:
        # As the WebSocket generator does: each request leaves from the schedule loop, its answer is timed, checked and
        # recorded in the connection's callback, and the connection is idle again at once (before the check): no future
        # and no task per request, so the generator's own cost per request, and what it holds up, stay as small as its twin's.
        request = head + str(len(body)).encode() + b"\r\n\r\n" + body
        keys: dict[HttpConn, str] = {}
        opening: set[asyncio.Task[None]] = set()

        def answered(conn: HttpConn, status: int, data: bytes, at: float) -> None:
            key = keys.pop(conn)
            if status < 0:
                rec.finish(key, at, "connection-error")
                conn.close()
                return
            idle.append(conn)
            record_answer(key, status, data, at)

        def send_on(conn: HttpConn, intended: float) -> None:
            key = keys[conn] = new_request(intended)
            try:
                conn.send(request, answered)
            except OSError:
                keys.pop(conn, None)
                rec.finish(key, clock(), "connection-error")
                conn.close()

        async def open_and_send(intended: float) -> None:
            try:
                conn = await HttpConn.open(host, port)
            except OSError:
                rec.finish(new_request(intended), clock(), "connection-error")
                return
            send_on(conn, intended)
            waited_open.add(rec.n - 1)

        t = start
        gaps = poisson_gaps(args.seed, args.rate)
        while True:
            t += next(gaps)
            if t >= end:
                break
            delay = t - clock() - EARLY_S
            if delay > 0.0:
                await asyncio.sleep(delay)
            conn = idle_conn()
            if conn is not None:
                send_on(conn, t)
            else:  # no idle connection: a task opens one (its request is timed from its intended time all the same)
                task = asyncio.get_running_loop().create_task(open_and_send(t))
                opening.add(task)
                task.add_done_callback(opening.discard)
        drain_until = clock() + args.task_timeout + 5.0
        while clock() < drain_until and (rec.pending or opening):
            await asyncio.sleep(0.01)
    else:

        async def worker() -> None:
            conn: HttpConn | None = await HttpConn.open(host, port)
            while clock() < end:
                conn = await one(clock(), conn)
                if conn is None:
                    conn = await HttpConn.open(host, port)

        await asyncio.sleep(max(0.0, start - clock()))
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    cpu_s = time.process_time() - cpu0
    wall_s = clock() - start
    for conn in idle:
        with contextlib.suppress(Exception):
            conn.close()
    n = rec.n
    outcome = rec.outcome  # built from the recorder's lists on each read
    np.savez_compressed(args.out, intended=rec.intended - start, sent=rec.sent - start, done=rec.done - start, outcome=outcome,
                        task_ids=np.array([task_of.get(key, "") for key in rec.index], dtype=str),  # in request order ("" if none named)
                        opened=np.isin(np.arange(n), np.fromiter(waited_open, dtype=np.int64, count=len(waited_open))))  # waited for a new connection
    meta = {
        "id": args.id,
        "codes": rec.codes,
        "submitted": n,
        "lost": int(np.sum(outcome == PENDING)),
        "duplicate_outcomes": rec.duplicates,
        "verify_failures": verify_failures,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "mode": "open" if args.rate else "closed",
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "transport": "http",
        "connections": HttpConn.opened,
        "start_clock": start,  # perf_counter() at time 0 (CLOCK_MONOTONIC: the gateway's legs use the same clock)
    }
    Path(str(args.out) + ".json").write_text(json.dumps(meta))
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="the gateway, http://127.0.0.1:PORT")
    p.add_argument("--id", default="http-loadgen-0")
    p.add_argument("--method", default="bench.synthetic")
    p.add_argument("--token", default=None, help="bearer API key, if the gateway has a key file")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: tasks/s (Poisson)")
    p.add_argument("--concurrency", type=int, default=16, help="closed loop: requests in flight (one connection each)")
    p.add_argument("--connections", type=int, default=16, help="open loop: keep-alive connections opened before the clock starts (more open when all are busy)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--task-timeout", type=float, default=10.0)
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    run_async(run_loadgen(args))


if __name__ == "__main__":
    main()
