"""Asyncio drivers for the peer side: the agent client, and the connection logic it shares with the controller.

``PeerClient`` owns one WebSocket to the router at a time and a ``PeerSession``
(the sans-I/O peer core). It registers on every fresh challenge, reconnects with
exponential backoff and full jitter when the connection drops, and verifies every
frame it receives before acting on it.

``AICPWebSocketClient`` is an agent: it runs a handler for each task it is sent,
at most ``concurrency`` at a time, and answers with a signed result. A handler
exception becomes a signed ``Result(ok=False)`` with its reason. A result that
could not be sent (the connection dropped) is kept and sent again after the next
registration; the router drops it if it already has it.

Typical use (``aicp.Agent`` wraps this with a persistent key, decorators and signals)::

    client = AICPWebSocketClient("ws://127.0.0.1:8765", "a1", Identity.load_or_create("a1.key"))
    client.register_handler("text.classify", text_classify)
    await client.serve()         # connect, renew the lease, handle tasks until close()

``serve()`` renews the lease: it enrols the client with its event loop's
``LeaseKeeper``, one timer for every client of the loop, which sends a heartbeat
only when the client sent no other frame for a whole interval (any verified frame
renews an agent's lease, PROTOCOL.md §6). Callers of the older sequence
(``connect()``, a task running ``heartbeat_loop()``, ``listen()``) keep working but
must hold on to that task themselves; ``heartbeat_loop()`` skips heartbeats by the same
rule, and skips the beats it missed while its event loop was blocked rather than send
them in a burst.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import random
import ssl as ssl_module
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

import msgspec
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from aicp import errors
from aicp.live.handlers import Handler, invoke
from aicp.live.inbound import DirectClientConnection
from aicp.live.links import FrameBatcher
from aicp.messages import MAX_FRAME_BYTES, Error, Goaway, RegisterAck, Result, Role, Task, payload
from aicp.peer import READY, PeerSession, Received
from aicp.signing import Identity

log = logging.getLogger("aicp.live.client")

DEFAULT_URL = "ws://127.0.0.1:8765"

#: Seconds a client waits for the pong to one of its WebSocket pings before dropping the connection.
PING_TIMEOUT_S = 20.0


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``"ws://a:1,ws://b:2"`` or a list -> the list of router URLs (at least one)."""
    parts = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls)]
    parts = [u for u in parts if u]
    if not parts:
        raise errors.LocalError("no router URL given")
    return parts

#: What a failed connection attempt may raise; anything else is a bug and propagates.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, WebSocketException, errors.ProtocolError, TimeoutError, EOFError)

#: Registration refusals that trying again cannot cure (the same key, id and version
#: would be refused again): ``connect_with_retry`` raises them instead of retrying.
PERMANENT_REFUSALS: frozenset[str] = frozenset({errors.KEY_MISMATCH, errors.NOT_ALLOWED, errors.INVALID_KEY, errors.UNSUPPORTED_VERSION, errors.INVALID_MESSAGE})


def proxy_for(url: str) -> str | None:
    """The proxy websockets would pick for ``url`` from the environment, looked up once per URL.

    websockets reads the proxy settings (``*_proxy``, ``no_proxy``) on every connection;
    a process running thousands of agents against one router would re-read the whole
    environment thousands of times. The answer only depends on the URL and the
    environment, which a running process does not change. O(1) after the first lookup.
    """
    cached = _PROXIES.get(url, _UNSET)
    if cached is _UNSET:
        cached = _PROXIES[url] = get_proxy(parse_uri(url))
    return cached  # type: ignore[return-value]


_UNSET = object()
_PROXIES: dict[str, object] = {}


class OutcomeWaiter:
    """Futures for tasks this peer submitted, settled by verified ``Result`` or ``Error`` bodies."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._futures)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._futures

    def expect(self, task_id: str) -> asyncio.Future[Any]:
        fut = self._futures.get(task_id)
        if fut is None:
            fut = self._futures[task_id] = asyncio.get_running_loop().create_future()
        return fut

    def forget(self, task_id: str) -> None:
        self._futures.pop(task_id, None)

    def settle(self, body: Result | Error, received: Received | None = None) -> bool:
        """Resolve the task's future; False if nobody waits for it (a duplicate or a late outcome)."""
        task_id = body.task_id
        fut = self._futures.get(task_id) if task_id is not None else None
        if fut is None or fut.done():
            return False
        if isinstance(body, Result):
            if body.ok:
                try:
                    fut.set_result(self.outcome(body, received))
                except msgspec.DecodeError as exc:
                    fut.set_exception(errors.TaskError(errors.MALFORMED, f"result payload: {exc}", task_id or ""))
            else:
                fut.set_exception(errors.TaskError(errors.AGENT_FAILED, body.reason, task_id or ""))
        else:
            fut.set_exception(errors.TaskError(body.code, body.message, task_id or ""))
        return True

    def outcome(self, body: Result, received: Received | None) -> Any:
        """What a successful task's future resolves to: here its decoded payload."""
        return msgspec.json.decode(body.payload)

    def fail_all(self, code: str, message: str) -> None:
        for task_id, fut in list(self._futures.items()):
            if not fut.done():
                fut.set_exception(errors.TaskError(code, message, task_id))


class LeaseKeeper:
    """Renews the leases of every client served on one event loop, with one timer.

    A process running thousands of agents would otherwise keep a task, a sleeping
    future and a timer per agent and wake each of them once per interval. Here a heap
    of ``(due, seq, client, token)`` in loop time holds one entry per enrolled client,
    and one ``loop.call_at`` handle is armed for the earliest; when it fires, every
    client due within ``slack`` is asked for its next due time (``PeerClient._beat``:
    it sends a heartbeat only if it sent no other frame for a whole interval) and
    pushed again. O(log n) per due client, n the clients of this loop; nothing per
    client between its due times. The slack (a sixteenth of the shortest interval,
    at most ``MAX_SLACK_S``) lets one wake-up send the heartbeats of many clients, a
    little early: they reach the router together, and it reads them in one wake-up too. A client leaves by changing its token (``leave``):
    its stale entry is dropped when it comes up.
    """

    #: Clients due this close to the earliest are served in the same wake-up (at most).
    MAX_SLACK_S = 0.25
    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LeaseKeeper] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, PeerClient, int]] = []
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self.enrolled = 0  # clients enrolled now
        self.slack = self.MAX_SLACK_S  # seconds a heartbeat may come early

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LeaseKeeper:
        """The keeper of ``loop`` (created on first use)."""
        keeper = cls._by_loop.get(loop)
        if keeper is None:
            keeper = cls._by_loop[loop] = cls(loop)
        return keeper

    def enrol(self, client: PeerClient, due: float, interval: float) -> None:
        """Ask ``client`` for a heartbeat at loop time ``due`` and every ``interval`` after, until ``leave``."""
        self.slack = min(self.slack, interval / 16.0)
        client._beat_token += 1
        self.enrolled += 1
        self._push(due, client)

    def leave(self, client: PeerClient) -> None:
        client._beat_token += 1
        self.enrolled -= 1
        if not self.enrolled and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed_at = float("inf")
            self._heap.clear()

    def _push(self, due: float, client: PeerClient) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, client, client._beat_token))
        if due < self._armed_at:
            if self._handle is not None:
                self._handle.cancel()
            self._armed_at = due
            self._handle = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("-inf")  # no arming while serving: once, for the earliest left, at the end
        heap = self._heap
        now = self.loop.time()
        horizon = now + self.slack
        due_now = []
        while heap and heap[0][0] <= horizon:
            _, _, client, token = heapq.heappop(heap)
            if token == client._beat_token:
                due_now.append(client)
        for client in due_now:
            nxt = client._beat(now, self.slack)
            if nxt is not None:
                self._push(nxt, client)
        self._armed_at = float("inf")
        if heap:
            self._armed_at = heap[0][0]
            self._handle = self.loop.call_at(self._armed_at, self._fire)


class PeerClient:
    """One peer identity with a self-healing connection to the router."""

    #: ``FrameBatcher(eager=...)``: write the first frame of each loop iteration at once (the gateway's link sets it)
    eager_writes: bool = False

    def __init__(
        self,
        server_url: str | Sequence[str],
        peer_id: str,
        identity: Identity,
        *,
        role: Role,
        capabilities: list[str] | None = None,
        concurrency: int = 1,
        router_key: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        reconnect: bool = True,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
        max_reconnect_attempts: int | None = None,
        open_timeout_s: float = 10.0,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        progress: bool = False,
        connect_gate: asyncio.Semaphore | None = None,
        ping_interval_s: float | None = None,
        ephemeral: bool = False,
    ) -> None:
        """``connect_gate``: a semaphore shared by the clients of one process, held for each
        connection attempt (TCP, WebSocket handshake, registration): thousands of agents in one
        process then register a bounded number at a time instead of all timing out together.
        ``ping_interval_s``: seconds between WebSocket pings to the router once registered, which is
        how this side notices a router that vanished without closing the connection (no pong within
        20 s: the connection is dropped and the client reconnects). None (default): the ``lease_s``
        the router announced, the time it gives an agent to prove itself alive; 0: never ping.
        ``ephemeral``: (controllers) this id was made up for this run, so the router may free it
        once the client is gone (docs/PROTOCOL.md §4.4). A router older than that field refuses
        it (``invalid-message``): the client then registers once more without it.
        """
        #: the routers to try, in turn: a list, or one string of comma-separated URLs (cluster mode)
        self.urls = split_urls(server_url)
        self._url_index = 0
        self.identity = identity
        self.session = PeerSession(identity, peer_id, role, capabilities or [], concurrency, router_key, progress=progress, ephemeral=ephemeral)
        self._pinned_router_key = router_key  # None: trust the key of each router we connect to
        self.ssl = ssl
        self.reconnect = reconnect
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.open_timeout_s = open_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.ws: DirectClientConnection | None = None
        self._batch: FrameBatcher | None = None  # coalesces this connection's frames into one write per loop iteration
        self.ready = asyncio.Event()
        self.closing = False
        self.registrations = 0  # successful registrations, reconnects included
        self.goaway: Goaway | None = None
        self.errors: deque[Error] = deque(maxlen=256)  # router errors not tied to a task we wait for
        self.rejected_frames = 0  # frames that failed verification here
        self.waiter = OutcomeWaiter()
        self._keeper: LeaseKeeper | None = None  # set while serve() renews the lease
        self._beat_token = 0  # LeaseKeeper's: an entry with another token is stale
        self._beat_interval: float | None = None  # serve()'s heartbeat interval (None: the router's)
        self._sent_at = 0.0  # loop time of the last frame handed to the connection (a renewal of the lease)
        self._beat_tasks: set[asyncio.Task[bool]] = set()  # heartbeats waiting for flow control
        self.heartbeats_sent = 0
        self.connect_gate = connect_gate
        self.ping_interval_s = ping_interval_s

    @property
    def peer_id(self) -> str:
        return self.session.peer_id

    @property
    def server_url(self) -> str:
        """The router URL in use (or tried next)."""
        return self.urls[self._url_index]

    @server_url.setter
    def server_url(self, urls: str | Sequence[str]) -> None:
        self.urls = split_urls(urls)
        self._url_index = 0

    def next_url(self) -> str:
        """Move to the next router URL (after a failed attempt); with one URL it stays."""
        self._url_index = (self._url_index + 1) % len(self.urls)
        return self.server_url

    @property
    def connected(self) -> bool:
        return self.ready.is_set()

    # ------------------------------------------------------------------ connection
    async def connect(self) -> None:
        """Open one connection and register on its challenge (holding ``connect_gate`` if any). Raises one of ``CONNECT_ERRORS``."""
        try:
            await self._connect_gated()
        except errors.ProtocolError as exc:
            if exc.code != errors.INVALID_MESSAGE or not self.session.ephemeral:
                raise
            # A router that predates ``ephemeral`` refuses the field: bind the id for good there instead.
            log.info("%s: router refused the ephemeral registration (%s); registering without it", self.peer_id, exc.message)
            self.session.ephemeral = False
            await self._connect_gated()

    async def _connect_gated(self) -> None:
        if self.connect_gate is None:
            await self._connect()
            return
        async with self.connect_gate:
            await self._connect()

    async def _connect(self) -> None:
        tls: dict[str, Any] = {} if self.ssl is None else {"ssl": self.ssl}  # wss:// without one: system trust store
        url = self.server_url
        ws: DirectClientConnection = await ws_connect(  # type: ignore[assignment]
            url,
            **tls,
            open_timeout=self.open_timeout_s,
            close_timeout=2.0,
            max_size=self.max_frame_bytes,
            max_queue=64,
            compression=None,
            create_connection=DirectClientConnection,
            proxy=proxy_for(url),
            ping_interval=None,  # started after registration, at an interval the router's lease sets
            ping_timeout=PING_TIMEOUT_S,
        )
        try:
            async with asyncio.timeout(self.open_timeout_s):
                self.session.connection_made()
                self.session.router_key = self._pinned_router_key
                self.session.receive(await ws.recv(decode=False), time.time())  # the challenge
                await ws.send(self.session.register_frame(time.time()), text=True)
                while True:
                    rec = self.session.receive(await ws.recv(decode=False), time.time())
                    if isinstance(rec.body, RegisterAck):
                        break
                    if isinstance(rec.body, Error):
                        raise errors.ProtocolError(rec.body.code, rec.body.message)
        except BaseException:
            await ws.close()
            raise
        assert self.session.state == READY
        interval = self.session.lease_s if self.ping_interval_s is None else self.ping_interval_s
        if interval > 0:
            ws.ping_interval = interval
            ws.start_keepalive()
        self.ws = ws
        self._batch = FrameBatcher(ws, self._dropped, eager=self.eager_writes)
        # The registration renewed the lease. The first heartbeat is due after a random half to
        # all of the interval, as if registered that much earlier: agents started together
        # do not renew their leases in bursts at the router.
        self._sent_at = self._batch.loop.time() - random.uniform(0.0, 0.5) * self._interval()
        self.goaway = None
        self.registrations += 1
        self.ready.set()
        log.info("%s registered with %s at %s", self.peer_id, self.session.router_id, self.server_url)
        await self._on_ready()

    async def connect_with_retry(self) -> None:
        """``connect()`` with exponential backoff and full jitter, until it works or ``close()``."""
        attempt = 0
        while not self.closing:
            try:
                await self.connect()
                return
            except CONNECT_ERRORS as exc:
                if isinstance(exc, errors.ProtocolError) and exc.code in PERMANENT_REFUSALS:
                    raise
                attempt += 1
                if self.max_reconnect_attempts is not None and attempt > self.max_reconnect_attempts:
                    raise
                if len(self.urls) > 1:
                    log.info("%s: %s failed (%s); trying %s", self.peer_id, self.server_url, exc, self.next_url())
                    if attempt % len(self.urls):  # the next router at once; back off once per round
                        continue
                delay = random.uniform(0.0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(attempt, 30)))
                log.info("%s: connect failed (%s); retrying in %.3f s", self.peer_id, exc, delay)
                await asyncio.sleep(delay)

    async def listen(self) -> None:
        """Handle frames until ``close()``; reconnect and re-register whenever the connection drops."""
        while not self.closing:
            ws = self.ws
            if ws is None:
                if not self.reconnect:
                    return
                await self.connect_with_retry()
                continue
            try:
                # Each frame goes to _frame as websockets parses it (aicp.live.inbound), as bytes, as
                # recv(decode=False) gave it: the session refuses a frame that is not strict UTF-8 JSON.
                ws.direct(self._message, check_utf8=False)
                await ws.wait_closed()
                log.info("%s: connection closed (%s)", self.peer_id, ws.close_exc)
            finally:
                if self.ws is ws:
                    self.ws = None
                    self.ready.clear()
            if not self.reconnect:
                return

    async def serve(self, heartbeat: float | None = None) -> None:
        """Connect (retrying) unless connected, then handle frames and renew the lease until ``close()``.

        Meanwhile the client is enrolled with its loop's ``LeaseKeeper``: a heartbeat every
        ``heartbeat`` seconds (default what the router asks for) in which it sent nothing
        else, from the first registration until the call returns or is cancelled.
        """
        self._beat_interval = heartbeat
        if not self.connected:
            await self.connect_with_retry()
        loop = asyncio.get_running_loop()
        keeper = self._keeper = LeaseKeeper.of(loop)
        keeper.enrol(self, self._sent_at + self._interval(), self._interval())
        try:
            await self.listen()
        finally:
            if self._keeper is keeper:
                self._keeper = None
                keeper.leave(self)

    async def close(self) -> None:
        """Leave: deregister if connected, close the socket, stop reconnecting."""
        self.closing = True
        if self._keeper is not None:
            self._keeper.leave(self)
            self._keeper = None
        ws = self.ws
        self.ws = None
        self.ready.clear()
        if ws is not None:
            if self._batch is not None:
                self._batch.flush()  # what was sent before deregistering goes first
            try:
                await ws.send(self.session.deregister_frame(time.time(), "closing"), text=True)
            except (ConnectionClosed, OSError):
                pass
            await ws.close()
        await self._on_close()

    async def send_heartbeat(self, load: int = 0) -> bool:
        """Send one heartbeat; False if not connected."""
        return await self._send(self.session.heartbeat_frame(time.time(), load))

    def _interval(self) -> float:
        return self._beat_interval if self._beat_interval is not None else self.session.heartbeat_s

    def _beat(self, now: float, slack: float) -> float | None:
        """``LeaseKeeper``: renew the lease now (up to ``slack`` early) unless a frame sent within the interval did;
        the next due time (None: leave)."""
        if self.closing:
            return None
        interval = self._interval()
        if not self.ready.is_set():
            return now + interval  # reconnecting: the registration will renew it
        renewed = self._sent_at + interval
        if renewed > now + slack:
            return renewed
        self.heartbeats_sent += 1
        frame = self.session.heartbeat_frame(time.time(), self._load())
        batch = self._batch
        if batch is not None and batch.ws is self.ws and batch.writable():
            batch.add(frame)
            self._sent_at = now
        else:
            task = batch.loop.create_task(self._send(frame)) if batch is not None else None
            if task is not None:
                self._beat_tasks.add(task)
                task.add_done_callback(self._beat_tasks.discard)
        return now + interval

    async def heartbeat_loop(self, interval: float | None = None) -> None:
        """Renew the lease until ``close()``: a heartbeat in each ``interval`` seconds (default: what
        the router asked for) in which the client sent no other frame, as ``serve()``'s ``LeaseKeeper`` does.

        Any frame the router verifies renews an agent's lease (PROTOCOL.md §6), so the loop
        sleeps until ``interval`` after the later of the last frame sent and its own last
        heartbeat, and sends one only if nothing was sent meanwhile. The first heartbeat
        comes after a random half to all of the interval, so agents started together do not
        renew their leases in bursts at the router. A loop that falls behind (its event loop
        blocked past several intervals) sends one heartbeat and counts the next interval
        from it: the beats it missed are skipped, never sent in a burst. While not
        registered it waits an interval at a time (the registration renews the lease).
        """
        loop = asyncio.get_running_loop()
        beat_at = loop.time() - random.uniform(0.0, 0.5) * (interval if interval is not None else self.session.heartbeat_s)
        while not self.closing:
            every = interval if interval is not None else self.session.heartbeat_s
            now = loop.time()
            if not self.ready.is_set():
                beat_at = now
            wait = max(beat_at, self._sent_at) + every - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            beat_at = now
            self.heartbeats_sent += 1
            await self.send_heartbeat(self._load())

    async def send_message(self, method: str, obj: Any, *, task_id: str | None = None, timeout: float | None = None) -> str:
        """Send a signed task to the router and return its id; ``wait_outcome(id)`` awaits its result."""
        raw = payload(obj)
        tid, frame = self.session.task_frame(method, raw, time.time(), task_id, timeout * 1000.0 if timeout else None)
        self.waiter.expect(tid)
        if not await self._send(frame):
            self.waiter.forget(tid)
            raise errors.TaskError(errors.SHUTTING_DOWN if self.closing else errors.AGENT_FAILED, "not connected", tid)
        return tid

    async def wait_outcome(self, task_id: str, timeout: float) -> Any:
        """The verified result payload of a task sent with ``send_message``, or ``TaskError``."""
        fut = self.waiter.expect(task_id)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise errors.TaskError(errors.TIMEOUT, f"no outcome within {timeout:g} s", task_id) from None
        finally:
            self.waiter.forget(task_id)

    # ------------------------------------------------------------------ internals
    def _send_at_once(self, frame: bytes) -> bool | None:
        """``_send`` where it need not wait: True (batched), False (not connected); None: it must wait, ``await _send``."""
        ws = self.ws
        if ws is None or not self.ready.is_set():
            return False
        batch = self._batch
        if batch is not None and batch.ws is ws and batch.writable():
            batch.add(frame)  # written at the end of this loop iteration, with the others
            self._sent_at = batch.loop.time()
            return True
        return None

    async def _send(self, frame: bytes) -> bool:
        at_once = self._send_at_once(frame)
        if at_once is not None:
            return at_once
        ws = self.ws
        assert ws is not None
        batch = self._batch
        if batch is not None and batch.ws is ws:
            batch.flush()  # the transport is backed up: what the batch holds goes first, then flow control
        try:
            await ws.send(frame, text=True)
        except ConnectionClosed:
            return False
        if batch is not None:
            self._sent_at = batch.loop.time()
        return True

    def _message(self, data: bytes, binary: bool) -> None:
        self._frame(data)

    def _frame(self, data: bytes) -> None:
        try:
            rec = self.session.receive(data, time.time())
        except errors.ProtocolError as exc:
            self.rejected_frames += 1
            log.warning("%s: refused a frame: %s", self.peer_id, exc)
            return
        body = rec.body
        if isinstance(body, (Result, Error)) and self.waiter.settle(body, rec):
            return
        if isinstance(body, Error):
            self.errors.append(body)
            log.warning("%s: router error %s: %s", self.peer_id, body.code, body.message)
        elif isinstance(body, Goaway):
            self.goaway = body
            log.info("%s: router is draining (%s, %.1f s)", self.peer_id, body.reason, body.drain_s)
        elif isinstance(body, Task):
            self._on_task(rec, body)

    def _dropped(self, frames: list[bytes]) -> None:
        """Frames accepted by ``_send`` that found the connection closed when written."""

    def _on_task(self, rec: Received, task: Task) -> None:
        log.warning("%s: a %s peer got a task; ignored", self.peer_id, self.session.role)

    def _load(self) -> int:
        return 0

    async def _on_ready(self) -> None:
        """Called after every successful registration."""

    async def _on_close(self) -> None:
        """Called once by ``close()``."""


class _HandlerSpec(msgspec.Struct):
    handler: Handler
    in_thread: bool = False


class AICPWebSocketClient(PeerClient):
    """An agent: registers its capabilities, runs handlers for the tasks it is sent, returns signed results."""

    def __init__(
        self,
        server_url: str | Sequence[str] = DEFAULT_URL,
        agent_id: str = "agent",
        identity: Identity | None = None,
        capabilities: list[str] | None = None,
        *,
        concurrency: int = 16,
        max_queued: int | None = None,
        max_unsent: int = 10_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(server_url, agent_id, identity or Identity.generate(), role="agent", capabilities=list(capabilities or []), concurrency=concurrency, **kwargs)
        self.handlers: dict[str, _HandlerSpec] = {}
        self.concurrency = concurrency
        #: tasks received while every slot was busy, FIFO; ``running`` counts the slots in use
        self._waiting: deque[Task] = deque()
        self._starting = False
        self.max_queued = max_queued if max_queued is not None else 16 * concurrency
        self.max_unsent = max_unsent
        self._unsent: OrderedDict[str, bytes] = OrderedDict()  # result id -> frame
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = 0
        self.completed = 0  # results produced here (ok or not)
        self.draining = False  # set by drain(): new tasks are refused, running ones finish

    def register_handler(self, method: str, handler: Handler, *, in_thread: bool = False) -> None:
        """Serve ``method`` with ``handler``. Sync handlers run inline unless ``in_thread`` (for blocking work).

        Registering before ``connect()`` adds ``method`` to the capabilities announced at registration.
        """
        self.handlers[method] = _HandlerSpec(handler, in_thread)
        if method not in self.session.capabilities:
            self.session.capabilities.append(method)

    def _load(self) -> int:
        return self.running

    def _dropped(self, frames: list[bytes]) -> None:
        # Results among them are sent again after the next registration (the router drops any it already has).
        for frame in frames:
            if b'"type":"result"' in frame:
                self._unsent[str(id(frame)) + ":" + str(time.monotonic_ns())] = frame
        while len(self._unsent) > self.max_unsent:
            self._unsent.popitem(last=False)

    async def drain(self, timeout: float) -> bool:
        """Refuse new tasks and wait up to ``timeout`` s for running ones to finish and send their results.

        A task sent meanwhile gets a signed ``Result(ok=False)`` ("shutting-down: ..."),
        which the router treats as a failed attempt and retries on another agent. True
        if nothing was left running; ``close()`` afterwards cancels what is left.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(list(self._tasks), timeout=left)  # tasks waiting for a slot start as these end
        return not self._tasks and not self._waiting

    def _on_task(self, rec: Received, task: Task) -> None:
        if self.draining:
            frame = self.session.result_frame(task, payload(None), time.time(), ok=False, reason="shutting-down: agent is draining")
            self._spawn(self._send_result(frame))
            return
        if len(self._tasks) + len(self._waiting) >= self.max_queued:
            frame = self.session.result_frame(task, payload(None), time.time(), ok=False, reason="overloaded: agent queue is full")
            self._spawn(self._send_result(frame))
            return
        self._waiting.append(task)
        self._start_waiting()

    def _spawn(self, coro: Any) -> None:
        t: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _start_waiting(self) -> None:
        """Start waiting tasks, oldest first, while a slot is free (one loop, no recursion)."""
        if self._starting:
            return
        self._starting = True
        try:
            while self._waiting and self.running < self.concurrency:
                self._start(self._waiting.popleft())
        finally:
            self._starting = False

    def _start(self, task: Task) -> None:
        """Run ``task`` in a free slot: inline if its handler answers at once, else in an asyncio task.

        Most handlers are sync and microseconds long: they run here, and the result is
        signed and batched without creating a task, a future or a task switch.
        """
        self.running += 1
        spec = self.handlers.get(task.method)
        started = time.perf_counter()
        if spec is None or spec.in_thread:
            self._spawn(self._run_task(task, spec, started))
            return
        try:
            value = spec.handler(msgspec.json.decode(task.payload))
        except Exception as exc:
            self._finish(task, None, started, exc)
            return
        if type(value) is not dict and inspect.isawaitable(value):  # most handlers return a dict, which never is
            self._spawn(self._await_result(task, value, started))
            return
        self._finish(task, value, started, None)

    async def _run_task(self, task: Task, spec: _HandlerSpec | None, started: float) -> None:
        try:
            if spec is None:
                raise LookupError(f"no handler for {task.method!r}")
            value = await invoke(spec.handler, msgspec.json.decode(task.payload), spec.in_thread)
        except Exception as exc:
            self._finish(task, None, started, exc)
            return
        except BaseException:  # cancelled (close): the slot is freed all the same
            self._release()
            raise
        self._finish(task, value, started, None)

    async def _await_result(self, task: Task, pending: Any, started: float) -> None:
        try:
            value = await pending
        except Exception as exc:
            self._finish(task, None, started, exc)
            return
        except BaseException:
            self._release()
            raise
        self._finish(task, value, started, None)

    def _finish(self, task: Task, value: Any, started: float, exc: Exception | None) -> None:
        """Sign the task's result (or its failure), send it, free the slot."""
        try:
            if exc is None:
                try:
                    service_ms = (time.perf_counter() - started) * 1000.0
                    frame = self.session.result_frame(task, payload(value), time.time(), ok=True, service_ms=round(service_ms, 4))
                except Exception as encode_exc:  # a result that is not JSON-encodable fails the task
                    exc = encode_exc
            if exc is not None:
                log.info("%s: handler for %s failed: %r", self.peer_id, task.method, exc)
                frame = self.session.result_frame(task, payload(None), time.time(), ok=False, reason=f"{type(exc).__name__}: {exc}")
            self.completed += 1
            self._send_result_soon(frame)
        finally:
            self._release()

    def _release(self) -> None:
        self.running -= 1
        if self._waiting:
            self._start_waiting()

    def _send_result_soon(self, frame: bytes) -> None:
        """``_send_result`` without a task when the frame can be batched now (the usual case)."""
        batch = self._batch
        if batch is not None and batch.ws is self.ws and self.ready.is_set() and batch.writable():
            batch.add(frame)  # a flush that finds the connection closed hands it to _dropped, which keeps it
            self._sent_at = batch.loop.time()
            return
        self._spawn(self._send_result(frame))

    async def _send_result(self, frame: bytes) -> None:
        batch = self._batch
        if batch is not None and batch.ws is self.ws and self.ready.is_set() and batch.writable():
            batch.add(frame)  # a flush that finds the connection closed hands it to _dropped, which keeps it
            self._sent_at = batch.loop.time()
            return
        key = str(id(frame)) + ":" + str(time.monotonic_ns())
        self._unsent[key] = frame
        while len(self._unsent) > self.max_unsent:
            self._unsent.popitem(last=False)
        if await self._send(frame):
            self._unsent.pop(key, None)

    async def _on_ready(self) -> None:
        # Results finished while we were away: the router deduplicates any it already has.
        for key, frame in list(self._unsent.items()):
            if not await self._send(frame):
                return
            self._unsent.pop(key, None)

    async def _on_close(self) -> None:
        self._waiting.clear()  # never started: the router fails them over when the connection ends
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    @property
    def unsent_results(self) -> int:
        return len(self._unsent)
