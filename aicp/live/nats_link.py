"""A small NATS client for the cluster's hot path: publish and subscribe on one TCP connection, nothing else.

``NatsLink`` speaks the NATS client protocol (``CONNECT``, ``PING``/``PONG``, ``SUB``,
``PUB``, ``MSG``) on an ``asyncio.Protocol``. It exists because nats-py spends about as
much CPU per message as the router's own work does on it (a ``Msg`` object, a queue and a
task switch per message received, a queue and a flusher task per message sent;
``aicp bench --routers`` measures the difference). Here:

* a message received is parsed in ``data_received`` and handed to its subscription's
  callback as the payload ``bytes``, in the same call (no task, no queue, no object);
* every ``publish`` of one event-loop iteration goes out in one ``write`` (``call_soon``
  coalescing), so a burst costs one system call;
* ``echo`` is off: a publisher does not receive its own messages (a router hears the others' summaries only);
* keep-alive: a ``PING`` every ``ping_interval_s``; with ``max_outstanding_pings``
  unanswered the connection is stale and dropped;
* a lost connection calls ``on_disconnected`` and is re-dialled every ``reconnect_wait_s``
  (servers of a comma-separated URL list in turn) until ``close()``; the subscriptions are
  made again, then ``on_reconnected`` is called (also when a first ``start`` failed and a
  later dial succeeds). While down, ``publish`` drops (and counts)
  what it is given: the cluster's deadlines cover it (docs/CLUSTER.md).

JetStream (``aicp.live.store_jetstream``) keeps using nats-py; it is not on a per-task path.
Costs: ``publish`` O(payload) (one copy into the batch); a received message O(its bytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import unquote, urlsplit

from aicp import errors

log = logging.getLogger("aicp.live.nats_link")

_CRLF = b"\r\n"
#: write buffer above which ``publish`` drops instead of queuing more (NATS or the network cannot keep up)
MAX_BUFFERED = 64 * 2**20


class _Server:
    __slots__ = ("host", "password", "port", "tls", "token", "user")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else "nats://" + url)
        if parts.scheme not in ("nats", "tls"):
            raise errors.LocalError(f"NATS URL {url!r}: nats:// or tls:// only")
        self.tls = parts.scheme == "tls"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 4222
        self.user = unquote(parts.username) if parts.username and parts.password is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.token = unquote(parts.username) if parts.username and parts.password is None else None

    def connect_line(self, name: str) -> bytes:
        opts: dict[str, object] = {"verbose": False, "pedantic": False, "name": name, "lang": "python-aicp", "version": "1", "protocol": 1,
                                   "headers": False, "no_responders": False, "echo": False}
        if self.user is not None:
            opts.update(user=self.user, **{"pass": self.password})
        if self.token is not None:
            opts["auth_token"] = self.token
        if self.tls:
            opts["tls_required"] = True
        return b"CONNECT " + json.dumps(opts, separators=(",", ":")).encode() + _CRLF


class _Wire(asyncio.Protocol):
    """One TCP connection: parses what arrives, writes what ``NatsLink`` batches."""

    def __init__(self, link: NatsLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need = 0  # bytes ``buf`` must hold before parsing again (a message's payload not all here yet)
        self.info: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # the server's INFO line came (tls:// upgrades then)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for fut in (self.info, self.ready):
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a failure nobody waits for is not an error to log
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.max_payload = 1 << 20
        self.pings_out = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"NATS closed the connection: {exc}"))
        if not self.info.done():
            self.info.set_exception(ConnectionError(f"NATS closed the connection: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            if len(data) < self.need:
                self.buf = data
                return
        self.need = 0
        pos, end = 0, len(data)
        subs = self.link._subs
        while pos < end:
            eol = data.find(_CRLF, pos)
            if eol < 0:
                break
            if data.startswith(b"MSG ", pos):
                # MSG <subject> <sid> [reply-to] <#bytes>
                head = data[pos + 4:eol].split(b" ")
                size = int(head[-1])
                stop = eol + 2 + size
                if stop + 2 > end:
                    self.need = stop + 2 - pos
                    break
                cb = subs.get(head[1])
                if cb is not None:
                    try:
                        cb(data[eol + 2:stop])
                    except Exception:  # a bug in a callback must not take the connection down
                        log.exception("NATS message callback failed")
                pos = stop + 2
                continue
            if data.startswith(b"HMSG ", pos):  # never asked for (headers: false); skip it whole
                size = int(data[pos + 5:eol].split(b" ")[-1])
                stop = eol + 2 + size
                if stop + 2 > end:
                    self.need = stop + 2 - pos
                    break
                pos = stop + 2
                continue
            self._control(data[pos:eol])
            pos = eol + 2
        self.buf = data[pos:] if pos < end else b""

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            if self.transport is not None:
                self.transport.write(b"PONG\r\n")
        elif line == b"PONG":
            self.pings_out = 0
            if not self.ready.done():
                self.ready.set_result(None)
        elif line.startswith(b"INFO "):
            try:
                self.max_payload = int(json.loads(line[5:]).get("max_payload", self.max_payload))
            except (ValueError, AttributeError):
                pass
            if not self.info.done():
                self.info.set_result(None)
        elif line.startswith(b"-ERR"):
            log.warning("NATS server: %s", line.decode(errors="replace"))
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"NATS refused the connection: {line.decode(errors='replace')}"))


class NatsLink:
    """Publish to NATS subjects and receive on some, over one connection that heals by itself.

    ``subscribe`` before ``start``. Callbacks get the payload ``bytes`` and run inside ``data_received``.
    """

    def __init__(self, url: str, name: str = "aicp", *, ping_interval_s: float = 1.0, max_outstanding_pings: int = 2,
                 reconnect_wait_s: float = 0.25, connect_timeout_s: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 on_disconnected: Callable[[], None] | None = None, on_reconnected: Callable[[], None] | None = None) -> None:
        self.servers = [_Server(u.strip()) for u in url.split(",") if u.strip()]
        if not self.servers:
            raise errors.LocalError("no NATS URL given")
        #: for tls:// servers; default: the system's trust store (SSL_CERT_FILE and SSL_CERT_DIR are honoured)
        self.ssl_context = ssl_context or (ssl.create_default_context() if any(srv.tls for srv in self.servers) else None)
        self.name = name
        self.ping_interval_s = ping_interval_s
        self.max_outstanding_pings = max_outstanding_pings
        self.reconnect_wait_s = reconnect_wait_s
        self.connect_timeout_s = connect_timeout_s
        self.on_disconnected = on_disconnected
        self.on_reconnected = on_reconnected
        self._subjects: list[bytes] = []
        self._subs: dict[bytes, Callable[[bytes], None]] = {}
        self._wire: _Wire | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._next_server = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set by ``_dial``: ``publish`` schedules its flush on it
        self.counters = {"published": 0, "dropped": 0, "too_large": 0, "connects": 0, "disconnects": 0}

    @property
    def connected(self) -> bool:
        return self._wire is not None and self._wire.transport is not None and self._wire.ready.done() and self._wire.ready.exception() is None

    def subscribe(self, subject: str, cb: Callable[[bytes], None]) -> None:
        sid = str(len(self._subjects) + 1).encode()
        self._subjects.append(subject.encode())
        self._subs[sid] = cb

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Connect now (raises if no server answers); a lost connection is re-dialled in the background until ``close``."""
        await self._dial()
        self._spawn(self._keep())

    def start_later(self) -> None:
        """Keep dialling in the background until connected (the first ``start`` failed)."""
        self._spawn(self._keep())

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))  # type: ignore[arg-type]

    async def _dial(self) -> None:
        server = self.servers[self._next_server % len(self.servers)]
        self._next_server += 1
        loop = self._loop = asyncio.get_running_loop()
        transport, wire = await asyncio.wait_for(loop.create_connection(lambda: _Wire(self), server.host, server.port), self.connect_timeout_s)
        if server.tls:  # NATS sends INFO in clear, then the client upgrades the connection before CONNECT
            try:
                await asyncio.wait_for(asyncio.shield(wire.info), self.connect_timeout_s)
                upgraded = await loop.start_tls(transport, wire, self.ssl_context or ssl.create_default_context(), server_hostname=server.host,
                                                ssl_handshake_timeout=self.connect_timeout_s)
            except BaseException:
                transport.abort()
                raise
            if upgraded is None:
                raise ConnectionError("TLS upgrade of the NATS connection failed")
            transport = cast(asyncio.Transport, upgraded)
            wire.transport = transport
        lines = [server.connect_line(self.name)]
        lines += [b"SUB %s %d\r\n" % (subject, i + 1) for i, subject in enumerate(self._subjects)]
        lines.append(b"PING\r\n")  # its PONG says CONNECT and every SUB were taken
        transport.write(b"".join(lines))
        try:
            await asyncio.wait_for(asyncio.shield(wire.ready), self.connect_timeout_s)
        except BaseException:
            transport.abort()
            raise
        self._wire = wire
        self.counters["connects"] += 1

    async def _keep(self) -> None:
        """Ping while connected; after a loss, tell the owner and re-dial (``on_reconnected`` when a dial succeeds here)."""
        while not self._closing:
            wire = self._wire
            if wire is None:
                await asyncio.sleep(self.reconnect_wait_s)
                try:
                    await self._dial()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    log.debug("NATS not reachable: %s", exc)
                    continue
                if self.on_reconnected is not None:
                    self.on_reconnected()
                continue
            done, _ = await asyncio.wait([wire.lost], timeout=self.ping_interval_s)
            if not done and wire.transport is not None:
                if wire.pings_out >= self.max_outstanding_pings:
                    log.warning("NATS did not answer %d pings: dropping the connection", wire.pings_out)
                    wire.transport.abort()
                    await wire.lost
                else:
                    wire.pings_out += 1
                    wire.transport.write(b"PING\r\n")
                    continue
            self._wire = None
            self._out.clear()
            if self._closing:
                return
            self.counters["disconnects"] += 1
            if self.on_disconnected is not None:
                self.on_disconnected()

    async def close(self) -> None:
        self._closing = True
        wire, self._wire = self._wire, None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if wire is not None and wire.transport is not None:
            self._flush_to(wire)
            wire.transport.close()

    # ------------------------------------------------------------------ publishing
    def publish(self, subject: bytes, payload: bytes, head: bytes = b"") -> bool:
        """Queue one message, ``head + payload`` (joined in the one copy that frames it); every message queued in
        this loop iteration leaves in one write. False if dropped."""
        wire = self._wire
        if wire is None or wire.transport is None:
            self.counters["dropped"] += 1
            return False
        if len(head) + len(payload) > wire.max_payload:
            self.counters["too_large"] += 1
            return False
        if wire.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.counters["dropped"] += 1
            return False
        self._out.append(b"PUB %s %d\r\n%s%s\r\n" % (subject, len(head) + len(payload), head, payload))
        self.counters["published"] += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # The loop the connection was dialled on: ``asyncio.get_running_loop()`` costs a getpid system call per
            # call on Python 3.11 (glibc does not cache the pid), once per forwarded task or outcome here.
            cast(asyncio.AbstractEventLoop, self._loop).call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        wire = self._wire
        if wire is not None:
            self._flush_to(wire)
        self._out.clear()

    def _flush_to(self, wire: _Wire) -> None:
        if self._out and wire.transport is not None:
            out, self._out = self._out, []
            wire.transport.write(out[0] if len(out) == 1 else b"".join(out))
