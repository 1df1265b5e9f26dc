"""The live router: a thin asyncio driver around ``RouterProtocol`` on a websockets server.

Everything that decides (handshake, verification, routing, retries, leases) is in
the sans-I/O core. This module only moves bytes and time:

* each WebSocket connection gets a connection id; its frames go to
  ``frame_received`` as bytes, and the core's ``Send`` outputs are written to the
  right connection verbatim (one writer task and a bounded queue per connection, so
  a slow peer never stalls the others);
* one timer (``loop.call_at``), checked after every event, calls ``on_timer`` at
  ``next_deadline()``, or earlier when the deadline moved later (``_rearm``). The core's ``now`` is wall-clock ``time.time()`` because
  it compares peers' timestamps; it is converted to loop time for ``call_at``;
* plain HTTP on the same port serves ``/healthz``, ``/metrics`` and ``/agents``;
* with a ``store`` (``aicp serve --state FILE``), the core's lasting state is restored
  from it at ``start`` and every change is handed to it (``aicp.live.store``: SQLite,
  committed in batches every few ms from the loop; or ``aicp.live.store_jetstream``:
  JetStream key-value buckets several routers share, ``--state nats://HOST:PORT``);
  ``stop`` writes the last records;
* transport limits are enforced here, before the core sees a frame, and each
  refusal is counted by reason in ``transport_closes`` (``/metrics``:
  ``aicp_transport_closes_total{reason=...}``): ``too-large`` (close 1009, also for a
  compressed frame that would inflate past the limit), ``invalid-utf8`` (close 1007),
  ``open-timeout`` (the opening handshake did not finish in ``open_timeout_s``: a
  slowloris), ``slow-consumer`` (close 1013: the peer's send queue is full) and
  ``connection-limit`` (HTTP 503: ``max_connections`` are open).

Run it with ``python -m aicp.server`` or ``aicp serve`` (command line in ``aicp.cli.serve``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

from aicp import errors
from aicp.live import http
from aicp.live.handlers import Handler
from aicp.live.inbound import DirectServerConnection
from aicp.live.links import LocalLink, WsLink
from aicp.live.local_peers import LocalPeer
from aicp.live.loop import DeadlineTimer
from aicp.live.prometheus import RouterMetrics
from aicp.live.record import TraceWriter
from aicp.live.store import SqliteStore, StateFileError
from aicp.live.store_jetstream import JetStreamStore
from aicp.live.verifying import VerifierPool
from aicp.messages import MAX_FRAME_BYTES
from aicp.protocol import CLOSE_TOO_BIG, Output, ProtocolConfig, RouterProtocol, Send, Verification
from aicp.router import Router, RouterConfig
from aicp.signing import Identity
from aicp.state import Binding, Snapshot

log = logging.getLogger("aicp.live.server")

CLOSE_INVALID_DATA = 1007

#: ``transport_closes`` reasons, by the close code the server sent.
_CLOSE_REASONS = {CLOSE_INVALID_DATA: "invalid-utf8", CLOSE_TOO_BIG: "too-large"}


class ServerLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Transport limits. The per-connection message rate is in ``ProtocolConfig``."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_connections: int = 10_000
    send_queue: int = 4096  # frames queued to one peer before it is closed as too slow
    recv_queue: int = 64  # with verify_threads: frames websockets buffers from one peer before it stops reading (else each is handled as it is read)
    write_limit: int = 1 << 20  # bytes buffered in the kernel-side transport before send() waits
    open_timeout_s: float = 10.0
    backlog: int = 4096  # pending TCP connections the kernel queues (capped by net.core.somaxconn); asyncio's 100 drops SYNs when a fleet connects at once
    close_timeout_s: float = 5.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    #: Keep pinging agents once registered. Off by default: an agent's lease (PROTOCOL.md §6)
    #: already proves it alive, and 10,000 agents' pings cost the router 500 wake-ups a second.
    #: Controllers and connections not yet registered are always pinged.
    ping_agents: bool = False
    compression: bool = False  # when on: permessage-deflate with small windows (bounded memory)
    drain_s: float = 10.0  # graceful shutdown: how long in-flight tasks may run on
    #: Signature checks of registered peers' frames on this many worker threads (libsodium
    #: releases the GIL), applied to the core in each connection's order; 0: on the event loop.
    verify_threads: int = 0


class AICPWebSocketServer:
    """The router process: WebSocket peers, in-process handlers, HTTP endpoints, graceful shutdown."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        identity: Identity | None = None,
        strategy: str = "round_robin",
        router_config: RouterConfig | None = None,
        protocol_config: ProtocolConfig | None = None,
        limits: ServerLimits | None = None,
        ssl: ssl_module.SSLContext | None = None,
        seed: int | None = None,
        store: SqliteStore | JetStreamStore | None = None,
        record: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.limits = limits or ServerLimits()
        pcfg = protocol_config or ProtocolConfig()
        if pcfg.max_frame_bytes != self.limits.max_frame_bytes:
            pcfg = msgspec.structs.replace(pcfg, max_frame_bytes=self.limits.max_frame_bytes)
        self.router = Router(router_config, strategy, rng=random.Random(seed))
        self.proto = RouterProtocol(identity or Identity.generate(), self.router, pcfg)
        self.store = store
        #: connections closed or refused by a transport limit, by reason (see the module docstring)
        self.transport_closes: dict[str, int] = {}
        self.metrics = RouterMetrics(self.proto, lambda: self.open_connections, lambda: self.transport_closes, lambda: self.store.stats() if self.store else None)
        self.proto.outcome_observer = self.metrics.observe_outcome
        self.recorder: TraceWriter | None = TraceWriter(record) if record is not None else None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._links: dict[int, WsLink | LocalLink] = {}
        self._next_conn = 0
        self._ws_open = 0
        self._timer = DeadlineTimer(self._on_timer)  # armed at the core's next deadline
        self._touch_timer: asyncio.TimerHandle | None = None  # with a store that expires bindings: touch_connected every touch_every_s
        self._server: Server | None = None
        self._verifier: VerifierPool | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._stopped = False
        self._local: dict[str, LocalPeer] = {}
        self._local_controller: LocalPeer | None = None
        self._pending_local: dict[str, Mapping[str, Handler]] = {}
        #: cluster mode (``aicp.live.cluster``): called when the core has frames for other routers
        self.cluster_flush: Callable[[], None] | None = None
        self.cluster_info: Callable[[], dict[str, object]] | None = None  # cluster mode: shown in /healthz

    # ------------------------------------------------------------------ properties
    @property
    def open_connections(self) -> int:
        return self._ws_open

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}"

    @property
    def router_key(self) -> str:
        return self.proto.identity.public_key_text

    # ------------------------------------------------------------------ the original design's surface
    def register_handler(self, method: str, handler: Handler) -> None:
        """Serve ``method`` inside the router process, as an agent named ``local.<method>``."""
        peer = self._local.get("local." + method)
        if peer is not None:
            peer.handlers[method] = handler
            return
        self.register_agent("local." + method, {method: handler})

    def register_agent(self, agent_id: str, handlers: Mapping[str, Handler]) -> None:
        """Add an in-process agent with these handlers; it registers through the normal signed handshake."""
        if self.loop is None:
            self._pending_local[agent_id] = handlers
            return
        peer = LocalPeer(self, agent_id, "agent", handlers, identity=self._local_identity(agent_id))
        self._local[agent_id] = peer
        peer.attach()

    def unregister_agent(self, agent_id: str) -> bool:
        """Drop an agent (local or remote): its connection closes and its tasks fail over. False if unknown.

        A remote agent's client will reconnect by itself unless it was closed.
        """
        local = self._local.pop(agent_id, None)
        if local is not None:
            local.detach()
            return True
        conn = self.proto.conn_of(agent_id)
        if conn is None:
            return False
        link = self._links.get(conn)
        if link is not None:
            link.close(1000, "unregistered by the router")
        return True

    async def route_message(self, method: str, obj: Any, timeout: float = 30.0, task_id: str | None = None) -> Any:
        """Submit a task from inside the router process; returns the verified result payload or raises ``TaskError``."""
        if self._local_controller is None or self._local_controller.conn is None:
            if self.loop is None or self._stopping:
                raise errors.TaskError(errors.SHUTTING_DOWN, "router is not running")
            peer_id = self.proto.config.router_id + ".local-controller"
            self._local_controller = LocalPeer(self, peer_id, "controller", identity=self._local_identity(peer_id))
            self._local_controller.attach()
        return await self._local_controller.submit(method, obj, timeout, task_id)

    def _local_identity(self, peer_id: str) -> Identity:
        """In-process peers' keys derive from the router's, so their ids stay bound to them across restarts."""
        seed = hashlib.sha256(b"AICP local peer\0" + self.proto.identity.seed + peer_id.encode()).digest()
        return Identity(seed)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Listen. With ``port=0`` the kernel picks a port; ``self.port`` holds it afterwards."""
        self.loop = self._timer.loop = asyncio.get_running_loop()
        if self.store is not None:
            if isinstance(self.store, JetStreamStore) and self.store.nc is None:
                await self.store.open()  # connects and reads the buckets (the SQLite file is read when it is opened)
            snap = self.store.snapshot
            try:
                self.proto.restore(snap, time.time())
            except errors.LocalError as exc:
                raise StateFileError(f"state file {self.store.path} holds a record the router refuses: {exc}; move it aside to start empty") from exc
            self.proto.store = self.store
            self.store.snapshot = Snapshot()  # restored: free the copy
            if isinstance(self.store, JetStreamStore):
                self.store.start(self.loop, learn=self._learn_binding, dropped=self._binding_dropped)
            else:
                self.store.start(self.loop)
            if self.store.touch_every_s is not None:
                self._touch_timer = self.loop.call_later(self.store.touch_every_s, self._touch_connected)
            log.info("state restored from %s: %d binding(s), %d seen id(s), %d outcome(s)", self.store.path, len(snap.bindings), len(snap.seen), len(snap.outcomes))
        self._stop_requested = asyncio.Event()
        if self.limits.verify_threads > 0 and self.proto.config.verify == "every-hop":
            self._verifier = VerifierPool(self.proto, self._frame_checked, self.limits.verify_threads)
        lim = self.limits
        extensions = None
        if lim.compression:
            extensions = [ServerPerMessageDeflateFactory(server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})]
        self._server = await serve(
            self._handle,  # type: ignore[arg-type]  # every connection is a CountedConnection (create_connection below)
            self.host,
            self.port,
            ssl=self.ssl,
            process_request=self._process_request,
            compression=None,
            extensions=extensions,
            max_size=lim.max_frame_bytes,
            max_queue=lim.recv_queue,
            write_limit=lim.write_limit,
            open_timeout=lim.open_timeout_s,
            backlog=lim.backlog,
            close_timeout=lim.close_timeout_s,
            ping_interval=lim.ping_interval_s,
            ping_timeout=lim.ping_timeout_s,
            server_header=None,
            create_connection=functools.partial(CountedConnection, on_open_timeout=self._open_timed_out),  # type: ignore[arg-type]
        )
        if self.recorder is not None:
            self.proto.record(self.recorder.write, time.time())
            self.recorder.start(self.loop)
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        for agent_id, handlers in self._pending_local.items():
            self.register_agent(agent_id, handlers)
        self._pending_local.clear()
        log.info("AICP WebSocket Server listening on %s", self.url)

    def request_stop(self) -> None:
        """Ask ``serve_forever`` to shut down gracefully (safe from a signal handler)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._stop_requested is not None
        await self._stop_requested.wait()
        await self.stop()

    async def stop(self, drain_s: float | None = None) -> None:
        """Stop accepting, send Goaway, let in-flight tasks finish for ``drain_s``, fail the rest, close."""
        if self._stopping or self.loop is None:
            return
        self._stopping = True
        loop = self.loop
        drain = self.limits.drain_s if drain_s is None else drain_s
        if self._server is not None:
            self._server.close(close_connections=False)  # the listening socket closes now
        self._apply(self.proto.begin_drain(time.time(), drain))
        deadline = loop.time() + drain
        while self.proto.pending_tasks() and loop.time() < deadline:
            await asyncio.sleep(min(0.01, max(0.0, deadline - loop.time())))
        unfinished = self.proto.pending_tasks()
        if self._touch_timer is not None:  # the peers connected now were seen now
            self._touch_timer.cancel()
            self._touch_timer = None
            self.proto.touch_connected(time.time())
        self._apply(self.proto.shutdown(time.time()))
        log.info("drained: %d task(s) failed with shutting-down", unfinished)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), self.limits.close_timeout_s + 1.0)
            except TimeoutError:
                log.warning("some connections did not close in time")
        self._timer.cancel()
        if self._verifier is not None:
            self._verifier.close()
        if self.recorder is not None:
            self.proto.record(None, time.time())
            self.recorder.close()
        if isinstance(self.store, JetStreamStore):
            await self.store.aclose()  # writes the last records: the outcomes of the drain too
        elif self.store is not None:
            self.store.close()  # writes the last records: the outcomes of the drain too
        self._stopped = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    # ------------------------------------------------------------------ the driver
    def _touch_connected(self) -> None:
        """Tell the store every connected peer was seen now; again in ``touch_every_s``. O(bound ids) each time."""
        every = self.store.touch_every_s if self.store is not None else None
        if self.loop is None or every is None or self._stopping:
            return
        self.proto.touch_connected(time.time())
        self._touch_timer = self.loop.call_later(every, self._touch_connected)

    def _open_timed_out(self) -> None:
        if not self._stopping:
            self.count_transport_close("open-timeout")

    @property
    def stopping(self) -> bool:
        """True once a graceful stop has begun (``/healthz`` says ``draining``)."""
        return self._stopping

    def count_transport_close(self, reason: str) -> None:
        self.transport_closes[reason] = self.transport_closes.get(reason, 0) + 1

    def _new_conn(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def attach_local(self, on_frame: Callable[[bytes], None], on_close: Callable[[], None]) -> int:
        assert self.loop is not None
        conn = self._new_conn()
        self._links[conn] = LocalLink(self.loop, on_frame, on_close, lambda: self._local_closed(conn))
        self._apply(self.proto.connection_made(conn, time.time()))
        return conn

    def _local_closed(self, conn: int) -> None:
        if self._links.pop(conn, None) is not None:
            self._apply(self.proto.connection_lost(conn, time.time()))

    def feed(self, conn: int, data: bytes) -> None:
        """A frame from an in-process peer."""
        if conn in self._links:
            self._apply(self.proto.frame_received(conn, data, time.time()))

    async def _handle(self, ws: CountedConnection) -> None:
        conn = self._new_conn()
        link = WsLink(ws, self.limits.send_queue, self.limits.close_timeout_s, lambda: self.count_transport_close("slow-consumer"))
        self._links[conn] = link
        self._ws_open += 1
        proto = self.proto
        verifier = self._verifier
        pinging = ws.keepalive_task is not None and not self.limits.ping_agents  # watched until the connection registers; an agent's pings then stop
        try:
            self._apply(proto.connection_made(conn, time.time()))
            if verifier is None:
                # Each message goes to the core as websockets parses it (aicp.live.inbound): text
                # messages are checked for UTF-8 there (1007), and a binary one is closed with 1003.
                def on_message(data: bytes, binary: bool) -> None:
                    nonlocal pinging
                    self._apply(proto.frame_received(conn, data, time.time(), binary=binary))
                    if pinging:
                        pinging = _unregistered(proto, conn, ws)

                ws.direct(on_message)
                await ws.wait_closed()
                raise ws.close_exc
            while True:
                # Text frames arrive as str: websockets checks their UTF-8 and closes with 1007 if it fails.
                data = await ws.recv()  # str for a text frame, bytes for a binary one (closed with 1003)
                if not verifier.submit(conn, data):
                    await verifier.wait_room(conn)
                if pinging:  # the verifier may apply the registration later: checked again on the next frame
                    pinging = _unregistered(proto, conn, ws)
        except ConnectionClosed as exc:
            reason = _CLOSE_REASONS.get(exc.sent.code) if exc.sent is not None and not exc.rcvd_then_sent else None
            if reason is not None:
                self.count_transport_close(reason)
        finally:
            if verifier is not None:
                verifier.connection_ended(conn)  # what it sent before closing is applied first, in order
            self._ws_open -= 1
            self._links.pop(conn, None)
            self._apply(proto.connection_lost(conn, time.time()))
            if not link.writer.done():
                link.writer.cancel()

    def _frame_checked(self, conn: int, data: bytes | str, verified: Verification | None) -> None:
        # A prepared frame's bytes are its text, encoded; bytes never prepared are a binary frame.
        self._apply(self.proto.frame_received(conn, data, time.time(), verified, binary=verified is None and isinstance(data, bytes)))

    def _learn_binding(self, binding: Binding) -> None:
        """A binding from the state the routers share (``JetStreamStore``): it wins over a local one."""
        self._apply(self.proto.learn_binding(binding, time.time()))

    def _binding_dropped(self, peer_id: str) -> None:
        """Another router freed an ephemeral binding in the shared state: written again if this router still holds it."""
        self.proto.binding_dropped(peer_id, time.time())

    def _apply(self, outputs: list[Output]) -> None:
        links = self._links
        for out in outputs:
            link = links.get(out.conn)
            if link is None:
                continue
            if isinstance(out, Send):
                link.send(out.data)
            else:
                link.close(out.code, out.reason)
        if self.proto.forwards and self.cluster_flush is not None:
            self.cluster_flush()
        self._rearm()

    def _rearm(self) -> None:
        """Arm the one timer for the core's next deadline, unless the armed one fires no later (``DeadlineTimer``):
        a timer armed for an earlier deadline is kept when the next deadline moves later, as it does on nearly every
        result (the oldest task's attempt deadline leaves the head of the heap), so it costs about one early wake-up
        per attempt timeout instead of a timer cancelled and created per task."""
        self._timer.arm(self.proto.next_deadline())

    def _on_timer(self) -> None:
        self._apply(self.proto.on_timer(time.time()))

    # ------------------------------------------------------------------ HTTP on the same port
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Gate WebSocket upgrades (draining, connection limit, per-address rate); answer plain HTTP."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self._stopping:
                return connection.respond(503, "router is shutting down\n")
            if self._ws_open >= self.limits.max_connections:
                self.count_transport_close("connection-limit")
                return connection.respond(503, "too many connections\n")
            source = connection.remote_address[0] if connection.remote_address else "?"
            if not self.proto.admit(str(source), time.time()):
                return connection.respond(429, "rate-limited: too many new connections from this address\n")
            return None
        return http.answer(self, connection, request.path.partition("?")[0])


def _unregistered(proto: RouterProtocol, conn: int, ws: ServerConnection) -> bool:
    """True while ``conn`` has not registered. Once it has (a role never changes after that), an
    agent's connection stops websockets' ping task, since its lease proves it alive; a
    controller's keeps pinging. Either way there is nothing left to watch: False."""
    role = proto.role_of(conn)
    if role is None:
        return True
    if role == "agent":
        task = ws.keepalive_task
        if task is not None:
            ws.keepalive_task = None
            task.cancel()
    return False


class CountedConnection(DirectServerConnection):
    """Counts opening handshakes cut off by ``open_timeout`` (websockets cancels them); delivers messages with ``direct``."""

    def __init__(self, *args: Any, on_open_timeout: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_open_timeout = on_open_timeout

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:
            self._on_open_timeout()
            raise
