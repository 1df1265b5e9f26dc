"""The live router: a thin asyncio driver around ``RouterProtocol`` on a websockets server.

Everything that decides (handshake, verification, routing, retries, leases) is in
the sans-I/O core. This module only moves bytes and time:

* each WebSocket connection gets a connection id; its frames go to
  ``frame_received`` as bytes, and the core's ``Send`` outputs are written to the
  right connection verbatim (one writer task and a bounded queue per connection, so
  a slow peer never stalls the others);
* one timer, re-armed with ``loop.call_at`` after every event, calls ``on_timer``
  at ``next_deadline()``. The core's ``now`` is wall-clock ``time.time()`` because
  it compares peers' timestamps; it is converted to loop time for ``call_at``;
* plain HTTP on the same port serves ``/healthz``, ``/metrics`` and ``/agents``;
* transport limits are enforced here, before the core sees a frame, and each
  refusal is counted by reason in ``transport_closes`` (``/metrics``:
  ``aicp_transport_closes_total{reason=...}``): ``too-large`` (close 1009, also for a
  compressed frame that would inflate past the limit), ``invalid-utf8`` (close 1007),
  ``open-timeout`` (the opening handshake did not finish in ``open_timeout_s``: a
  slowloris), ``slow-consumer`` (close 1013: the peer's send queue is full) and
  ``connection-limit`` (HTTP 503: ``max_connections`` are open).

Run it with ``python -m aicp.server`` or ``aicp serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import ssl as ssl_module
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

from aicp import errors, strategies
from aicp.handlers import Handler
from aicp.links import LocalLink, WsLink
from aicp.local_peers import LocalPeer
from aicp.logs import add_logging_arguments, setup_logging
from aicp.messages import MAX_FRAME_BYTES
from aicp.metrics import CONTENT_TYPE, RouterMetrics
from aicp.protocol import Output, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

log = logging.getLogger("aicp.server")

CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

#: ``transport_closes`` reasons, by the close code the server sent.
_CLOSE_REASONS = {CLOSE_INVALID_DATA: "invalid-utf8", CLOSE_TOO_BIG: "too-large"}


class ServerLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Transport limits. The per-connection message rate is in ``ProtocolConfig``."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_connections: int = 10_000
    send_queue: int = 4096  # frames queued to one peer before it is closed as too slow
    recv_queue: int = 64  # frames websockets buffers from one peer before it stops reading
    write_limit: int = 1 << 20  # bytes buffered in the kernel-side transport before send() waits
    open_timeout_s: float = 10.0
    close_timeout_s: float = 5.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    compression: bool = False  # when on: permessage-deflate with small windows (bounded memory)
    drain_s: float = 10.0  # graceful shutdown: how long in-flight tasks may run on


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
        #: connections closed or refused by a transport limit, by reason (see the module docstring)
        self.transport_closes: dict[str, int] = {}
        self.metrics = RouterMetrics(self.proto, lambda: self.open_connections, lambda: self.transport_closes)
        self.proto.outcome_observer = self.metrics.observe_outcome
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._links: dict[int, WsLink | LocalLink] = {}
        self._next_conn = 0
        self._ws_open = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._server: Server | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stopping = False
        self._stopped = False
        self._local: dict[str, LocalPeer] = {}
        self._local_controller: LocalPeer | None = None
        self._pending_local: dict[str, Mapping[str, Handler]] = {}

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
        peer = LocalPeer(self, agent_id, "agent", handlers)
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
            self._local_controller = LocalPeer(self, self.proto.config.router_id + ".local-controller", "controller")
            self._local_controller.attach()
        return await self._local_controller.submit(method, obj, timeout, task_id)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Listen. With ``port=0`` the kernel picks a port; ``self.port`` holds it afterwards."""
        self.loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        lim = self.limits
        server = self

        class _CountedConnection(ServerConnection):
            """Counts opening handshakes cut off by ``open_timeout`` (websockets cancels them)."""

            async def handshake(self, *args: Any, **kwargs: Any) -> None:
                try:
                    await super().handshake(*args, **kwargs)
                except asyncio.CancelledError:
                    if not server._stopping:
                        server.count_transport_close("open-timeout")
                    raise

        extensions = None
        if lim.compression:
            extensions = [ServerPerMessageDeflateFactory(server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})]
        self._server = await serve(
            self._handle,
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
            close_timeout=lim.close_timeout_s,
            ping_interval=lim.ping_interval_s,
            ping_timeout=lim.ping_timeout_s,
            server_header=None,
            create_connection=_CountedConnection,
        )
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
        self._apply(self.proto.shutdown(time.time()))
        log.info("drained: %d task(s) failed with shutting-down", unfinished)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), self.limits.close_timeout_s + 1.0)
            except TimeoutError:
                log.warning("some connections did not close in time")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stopped = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    # ------------------------------------------------------------------ the driver
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

    async def _handle(self, ws: ServerConnection) -> None:
        conn = self._new_conn()
        link = WsLink(ws, self.limits.send_queue, self.limits.close_timeout_s, lambda: self.count_transport_close("slow-consumer"))
        self._links[conn] = link
        self._ws_open += 1
        proto = self.proto
        try:
            self._apply(proto.connection_made(conn, time.time()))
            while True:
                # Text frames arrive as str: websockets checks their UTF-8 and closes with 1007 if it fails.
                data = await ws.recv()
                self._apply(proto.frame_received(conn, data, time.time()))
        except ConnectionClosed as exc:
            reason = _CLOSE_REASONS.get(exc.sent.code) if exc.sent is not None and not exc.rcvd_then_sent else None
            if reason is not None:
                self.count_transport_close(reason)
        finally:
            self._ws_open -= 1
            self._links.pop(conn, None)
            self._apply(proto.connection_lost(conn, time.time()))
            if not link.writer.done():
                link.writer.cancel()

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
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.proto.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is None or self.loop is None:
            return
        # 1 ms slack: loop time and wall time drift apart by microseconds, and firing early is a wasted wake-up.
        when = self.loop.time() + max(0.0, deadline - time.time()) + 0.001
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._apply(self.proto.on_timer(time.time()))

    # ------------------------------------------------------------------ HTTP on the same port
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
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
        path = request.path.partition("?")[0]
        if path == "/healthz":
            body = {"status": "draining" if self._stopping else "ok", "connections": self._ws_open, "agents": self.router.registry.count_by_status(), "tasks_in_flight": self.proto.pending_tasks()}
            return _respond(connection, 200, json.dumps(body).encode(), "application/json")
        if path == "/metrics":
            return _respond(connection, 200, self.metrics.render(), CONTENT_TYPE)
        if path == "/agents":
            connected = self.proto.connected_peers()
            agents = []
            for snap in self.router.registry.snapshot():
                snap["connected"] = snap["agent_id"] in connected
                agents.append(snap)
            body2 = {"router": self.proto.config.router_id, "router_key": self.router_key, "strategy": self.router.strategy.name, "agents": agents}
            return _respond(connection, 200, json.dumps(body2).encode(), "application/json")
        return connection.respond(404, "not found: try /healthz, /metrics, /agents, or a WebSocket upgrade\n")


def _respond(connection: ServerConnection, status: int, body: bytes, content_type: str) -> Response:
    response = connection.respond(status, "")
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    response.headers["Content-Type"] = content_type
    response.headers["Content-Length"] = str(len(body))
    response.headers["Cache-Control"] = "no-store"
    response.body = body
    return response


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes it)")
    add("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    add("--strategy", default="round_robin", choices=strategies.names(), help="routing strategy")
    add("--heartbeat", type=float, default=30.0, metavar="S", help="heartbeat interval agents are told to use (s)")
    add("--lease", type=float, default=90.0, metavar="S", help="an agent silent this long is evicted (s)")
    add("--attempt-timeout", type=float, default=5.0, metavar="S", help="time limit of one dispatch before failover (s)")
    add("--window", type=float, default=60.0, metavar="S", help="freshness and replay window (s)")
    add("--allowlist", metavar="FILE", help="file of admitted public keys, one 'ed25519:...' per line")
    add("--key", metavar="FILE", help="router identity file (created 0600 if missing; default: a new key per run)")
    add("--max-frame", type=int, default=MAX_FRAME_BYTES, metavar="BYTES", help="largest frame accepted (default 1 MiB)")
    add("--max-connections", type=int, default=10_000, help="concurrent WebSocket connections (default 10000)")
    add("--max-tasks", type=int, default=100_000, help="tasks in the router at once; beyond this new ones get overloaded (default 100000)")
    add("--rate", type=float, default=20_000.0, metavar="MSG/S", help="per-connection message rate (burst = rate/4)")
    add("--connect-rate", type=float, default=50.0, metavar="CONN/S", help="new connections per source address per second (default 50)")
    add("--connect-burst", type=float, default=200.0, metavar="N", help="burst of new connections per source address (default 200)")
    add("--compression", action="store_true", help="allow permessage-deflate (small windows); off by default")
    add("--tls-cert", metavar="PEM", help="certificate chain: serve wss://")
    add("--tls-key", metavar="PEM", help="private key for --tls-cert")
    add("--drain-timeout", type=float, default=10.0, metavar="S", help="on SIGINT/SIGTERM, how long in-flight tasks may finish (s)")
    add("--verify", choices=["every-hop", "edge"], default="every-hop", help="check signatures at the router on every frame, or at the edges only")
    add("--seed", type=int, default=None, help="seed of the routing strategy's randomness")
    add_logging_arguments(parser)


def _load_allowlist(path: str) -> frozenset[str]:
    keys = [line.strip() for line in Path(path).read_text("utf-8").splitlines()]
    return frozenset(k for k in keys if k and not k.startswith("#"))


def build_server(args: argparse.Namespace) -> AICPWebSocketServer:
    ssl_ctx = None
    if args.tls_cert:
        ssl_ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
        ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)
    rcfg = RouterConfig(heartbeat_s=args.heartbeat, lease_s=args.lease, attempt_timeout_s=args.attempt_timeout, max_tasks=args.max_tasks)
    pcfg = ProtocolConfig(
        window_s=args.window,
        allowlist=_load_allowlist(args.allowlist) if args.allowlist else None,
        max_frame_bytes=args.max_frame,
        rate_per_s=args.rate,
        rate_burst=max(1.0, args.rate / 4.0),
        connect_rate_per_s=args.connect_rate,
        connect_burst=args.connect_burst,
        verify=args.verify,
    )
    limits = ServerLimits(max_frame_bytes=args.max_frame, max_connections=args.max_connections, compression=args.compression, drain_s=args.drain_timeout)
    identity = Identity.load_or_create(args.key) if args.key else None
    return AICPWebSocketServer(args.host, args.port, identity=identity, strategy=args.strategy, router_config=rcfg, protocol_config=pcfg, limits=limits, ssl=ssl_ctx, seed=args.seed)


async def _serve(server: AICPWebSocketServer) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    print(f"AICP WebSocket Server listening on {server.url}", flush=True)
    print(f"Router key: {server.router_key}", flush=True)
    print("Waiting for agents to connect...", flush=True)
    await server.serve_forever()
    print("AICP WebSocket Server stopped", flush=True)


def run_async(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.json_logs)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    server = build_server(args)
    run_async(_serve(server))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aicp.server", description="Run the AICP WebSocket router.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
