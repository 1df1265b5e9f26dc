"""``aicp serve`` (and ``python -m aicp.server``): the router's command line and TLS set-up."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl as ssl_module
import sys
from pathlib import Path

from aicp import strategies
from aicp.live.logs import add_logging_arguments, setup_logging
from aicp.live.loop import run_async, tune_gc
from aicp.live.server import AICPWebSocketServer, ServerLimits
from aicp.live.store import SqliteStore, StateFileError
from aicp.live.store_jetstream import PURGE_MARKER_TTL_S, JetStreamStore, is_state_url
from aicp.messages import MAX_FRAME_BYTES
from aicp.protocol import ProtocolConfig
from aicp.router import RouterConfig
from aicp.signing import Identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes it)")
    add("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    add("--strategy", default="round_robin", choices=strategies.names(), help="routing strategy")
    add("--heartbeat", type=float, default=30.0, metavar="S", help="heartbeat interval agents are told to use (s)")
    add("--lease", type=float, default=90.0, metavar="S", help="an agent silent this long is evicted (s)")
    add("--attempt-timeout", type=float, default=5.0, metavar="S", help="time limit of one dispatch before failover (s)")
    add("--default-deadline", type=float, default=30.0, metavar="S", help="a task's overall limit when it names none (s)")
    add("--max-attempts", type=int, default=3, help="dispatches per task before it fails (default 3)")
    add("--retry-backoff-base", type=float, default=0.005, metavar="S", help="retry backoff base, full jitter (s)")
    add("--retry-backoff-cap", type=float, default=1.0, metavar="S", help="retry backoff cap (s)")
    add("--retry-budget", type=float, default=0.2, metavar="RATIO", help="retry tokens each submitted task earns (default 0.2)")
    add("--trust-prior", type=float, default=0.5, metavar="P", help="trust of a newly registered agent (default 0.5)")
    add("--window", type=float, default=60.0, metavar="S", help="freshness and replay window (s)")
    add("--allowlist", metavar="FILE", help="file of admitted public keys, one 'ed25519:...' per line")
    add("--key", metavar="FILE", help="router identity file (created 0600 if missing; default: a new key per run, or FILE.key with --state)")
    add("--state", metavar="FILE|URL", help="keep id->key bindings, seen message ids and task outcomes in this SQLite file across restarts "
        "(created if missing), or in JetStream key-value buckets at nats://HOST:PORT, shared by the routers using them (default: nothing kept)")
    add("--state-bucket", default="aicp", metavar="PREFIX", help="with --state nats://...: the buckets' name prefix (default aicp)")
    add("--state-batch-ms", type=float, default=10.0, metavar="MS", help="commit state records every MS ms: what a crash can lose (default 10)")
    add("--binding-ttl", type=float, default=None, metavar="S",
        help="with --state: forget, when the router starts, the bindings of ids not seen for S seconds (default: keep them for good)")
    add("--state-purge-marker", type=int, default=PURGE_MARKER_TTL_S, metavar="S",
        help=f"with --state nats://...: whole seconds a freed ephemeral id's purge marker stays in the bindings bucket; "
             f"a router reconnecting later than this misses it (default {PURGE_MARKER_TTL_S})")
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
    add("--verify-threads", type=int, default=0, metavar="N", help="check signatures on N worker threads, off the event loop (default 0: on the loop)")
    add("--seed", type=int, default=None, help="seed of the routing strategy's randomness")
    add("--record", metavar="FILE", default=None, help="write a trace of every task, dispatch, result, outcome and agent event (docs/TRACE.md; .gz compresses)")
    add("--cluster", metavar="NATS_URL", default=None, help="join a cluster of routers over NATS, e.g. nats://127.0.0.1:4222 (docs/CLUSTER.md; needs aicp[cluster])")
    add("--router-id", default="router", help="this router's name: unique in its cluster, letters, digits, _ and - (default router)")
    add("--cluster-name", default="default", help="NATS subject prefix shared by the routers of one cluster")
    add("--publish-interval", type=float, default=0.05, metavar="S", help="cluster: how often this router publishes its summary (s)")
    add("--peer-timeout", type=float, default=0.5, metavar="S", help="cluster: a router silent this long is lost and its tasks fail over (s)")
    add_logging_arguments(parser)


def _load_allowlist(path: str) -> frozenset[str]:
    keys = [line.strip() for line in Path(path).read_text("utf-8").splitlines()]
    return frozenset(k for k in keys if k and not k.startswith("#"))


def build_server(args: argparse.Namespace) -> AICPWebSocketServer:
    ssl_ctx = None
    if args.tls_cert:
        ssl_ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
        ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)
    rcfg = RouterConfig(heartbeat_s=args.heartbeat, lease_s=args.lease, attempt_timeout_s=args.attempt_timeout, max_tasks=args.max_tasks,
                        default_deadline_s=args.default_deadline, max_attempts=args.max_attempts, backoff_base_s=args.retry_backoff_base,
                        backoff_cap_s=args.retry_backoff_cap, retry_budget_ratio=args.retry_budget, trust_prior=args.trust_prior)
    pcfg = ProtocolConfig(
        router_id=args.router_id,
        window_s=args.window,
        allowlist=_load_allowlist(args.allowlist) if args.allowlist else None,
        max_frame_bytes=args.max_frame,
        rate_per_s=args.rate,
        rate_burst=max(1.0, args.rate / 4.0),
        connect_rate_per_s=args.connect_rate,
        connect_burst=args.connect_burst,
        verify=args.verify,
    )
    limits = ServerLimits(max_frame_bytes=args.max_frame, max_connections=args.max_connections, compression=args.compression, drain_s=args.drain_timeout,
                          verify_threads=args.verify_threads)
    shared = bool(args.state) and is_state_url(args.state)
    # a router whose state survives keeps its key too (give --key with a NATS URL)
    key_file = args.key or (args.state + ".key" if args.state and not shared else None)
    identity = Identity.load_or_create(key_file) if key_file else None
    store: SqliteStore | JetStreamStore | None = None
    if shared:
        store = JetStreamStore(args.state, args.state_bucket, batch_s=args.state_batch_ms / 1000.0,
                               purge_marker_ttl_s=args.state_purge_marker, binding_ttl_s=args.binding_ttl)  # connects in server.start()
    elif args.state:
        store = SqliteStore.open(args.state, router_key=identity.public_key_text if identity else None, batch_s=args.state_batch_ms / 1000.0,
                                 binding_ttl_s=args.binding_ttl)
    return AICPWebSocketServer(
        args.host, args.port, identity=identity, strategy=args.strategy, router_config=rcfg, protocol_config=pcfg, limits=limits, ssl=ssl_ctx, seed=args.seed,
        store=store, record=args.record,
    )


async def _serve(server: AICPWebSocketServer, args: argparse.Namespace | None = None) -> None:
    await server.start()
    cluster = None
    if args is not None and args.cluster:
        from aicp.cluster import ClusterConfig
        from aicp.live.cluster import NatsCluster

        cluster = NatsCluster(server, args.cluster, ClusterConfig(publish_interval_s=args.publish_interval, peer_timeout_s=args.peer_timeout), args.cluster_name)
        await cluster.start()
        print(f"Router {args.router_id} joined the cluster at {args.cluster}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    print(f"AICP WebSocket Server listening on {server.url}", flush=True)
    print(f"Router key: {server.router_key}", flush=True)
    print("Waiting for agents to connect...", flush=True)
    try:
        await server.serve_forever()
    finally:
        if cluster is not None:
            await cluster.stop()
    print("AICP WebSocket Server stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.json_logs)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.binding_ttl is not None and (not args.binding_ttl > 0 or not args.state):
        print("error: --binding-ttl takes a positive number of seconds, with --state", file=sys.stderr)
        return 2
    if args.state_purge_marker < 1:
        print("error: --state-purge-marker must be at least 1 (s)", file=sys.stderr)
        return 2
    if args.cluster:
        from aicp.live.cluster import ROUTER_ID

        if not ROUTER_ID.match(args.router_id) or not ROUTER_ID.match(args.cluster_name):
            print(f"error: --router-id and --cluster-name must match {ROUTER_ID.pattern} (they become NATS subject tokens)", file=sys.stderr)
            return 2
    try:
        server = build_server(args)
        tune_gc()  # this process holds every peer's connection
        run_async(_serve(server, args))
    except StateFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aicp.server", description="Run the AICP WebSocket router.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
