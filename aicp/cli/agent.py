"""``aicp agent``: run one or more agents that serve built-in handlers.

Each ``--capability`` is served by the built-in handler of the same name when
there is one (``echo``, ``text.classify``, ``synthetic``), else by ``--handler``
(default ``synthetic``). ``--count N`` runs N agents in this process, ids
``ID-0`` … ``ID-(N-1)``. Keys come from ``--key FILE`` (``FILE.0``, ``FILE.1`` …
when N > 1), created with mode 0600 when missing. Without ``--key``, an agent
with a chosen ``--id`` keeps its key in ``$AICP_KEY_DIR`` (default
``~/.aicp/keys``) as ``ID.key``, because the router binds an id to its first key
and would refuse the same id under a new one; an agent with a random id gets a
fresh key each run. SIGINT/SIGTERM deregister every agent and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import ssl as ssl_module
import sys
from pathlib import Path

from aicp.live import handlers
from aicp.live.client import DEFAULT_URL, AICPWebSocketClient
from aicp.live.logs import add_logging_arguments, setup_logging
from aicp.live.loop import run_async
from aicp.signing import Identity

log = logging.getLogger("aicp.agent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default=DEFAULT_URL, help=f"router URL (default {DEFAULT_URL})")
    add("--capability", action="append", default=None, metavar="METHOD", help="capability to serve (repeatable; default text.classify)")
    add("--handler", default="synthetic", choices=handlers.BUILTINS, help="built-in handler for capabilities without one of their own name")
    add("--count", type=int, default=1, help="agents to run in this process (default 1)")
    add("--id", default=None, help="agent id (default agent-<random>); with --count N, ID-0 … ID-(N-1)")
    add("--key", metavar="FILE", help="identity file (created 0600 if missing); FILE.i for each agent when --count > 1; default with --id: $AICP_KEY_DIR/ID.key")
    add("--concurrency", type=int, default=16, help="tasks one agent runs at once (default 16)")
    add("--service-time", default="0", metavar="[DIST:]MS", help="synthetic handler: constant|exponential|lognormal mean in ms (default 0)")
    add("--fail-prob", type=float, default=0.0, help="synthetic handler: probability a task fails (default 0)")
    add("--heartbeat", type=float, default=None, metavar="S", help="heartbeat interval (default: what the router asks for)")
    add("--router-key", default=None, help="expected router public key (default: trust the router's key on each connection)")
    add("--cafile", default=None, help="CA bundle for wss:// URLs")
    add("--seed", type=int, default=None, help="seed for the synthetic handler")
    add_logging_arguments(parser)


def key_dir() -> Path:
    return Path(os.environ.get("AICP_KEY_DIR") or Path.home() / ".aicp" / "keys")


def build_agents(args: argparse.Namespace) -> list[AICPWebSocketClient]:
    capabilities = args.capability or ["text.classify"]
    base_id = args.id or f"agent-{secrets.token_hex(4)}"
    ssl_ctx = ssl_module.create_default_context(cafile=args.cafile) if args.url.startswith("wss://") else None
    agents = []
    for i in range(args.count):
        agent_id = base_id if args.count == 1 else f"{base_id}-{i}"
        if args.key:
            identity = Identity.load_or_create(args.key if args.count == 1 else f"{args.key}.{i}")
        elif args.id:
            identity = Identity.load_or_create(key_dir() / f"{agent_id}.key")
        else:
            identity = Identity.generate()
        client = AICPWebSocketClient(args.url, agent_id, identity, concurrency=args.concurrency, router_key=args.router_key, ssl=ssl_ctx)
        seed = None if args.seed is None else args.seed + i
        for cap in capabilities:
            name = cap if cap in handlers.BUILTINS else args.handler
            client.register_handler(cap, handlers.builtin(name, args.service_time, args.fail_prob, seed))
        agents.append(client)
    return agents


async def _run_agent(client: AICPWebSocketClient, heartbeat: float | None) -> None:
    await client.connect_with_retry()
    print(f"Agent {client.peer_id} registered with {client.session.router_id} at {client.server_url} "
          f"(key {client.identity.public_key_text}, capabilities {', '.join(client.session.capabilities)})", flush=True)
    beat = asyncio.get_running_loop().create_task(client.heartbeat_loop(heartbeat))
    try:
        await client.listen()
    finally:
        beat.cancel()


async def _main(args: argparse.Namespace) -> None:
    agents = build_agents(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = [loop.create_task(_run_agent(a, args.heartbeat)) for a in agents]
    stopper = loop.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *runners], return_when=asyncio.FIRST_COMPLETED)
    for t in done:
        if t is not stopper and t.exception() is not None:
            log.error("agent stopped: %r", t.exception())
    await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
    for t in runners:
        t.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    stopper.cancel()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.json_logs)
    if args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        handlers.parse_service_time(args.service_time)
    except ValueError as exc:
        print(f"error: --service-time: {exc}", file=sys.stderr)
        return 2
    run_async(_main(args))
    return 0
