"""``aicp agent``: run one or more agents that serve built-in handlers.

Each ``--capability`` is served by the built-in handler of the same name when
there is one (``echo``, ``text.classify``, ``synthetic``), else by ``--handler``
(default ``synthetic``). ``--count N`` runs N agents in this process, ids
``ID-0`` … ``ID-(N-1)``; each is an ``aicp.Agent``. They connect and register at most
``--connect-concurrency`` at a time (a storm of thousands of simultaneous handshakes
would make them all miss their timeout and retry together).

Keys come from ``--key FILE`` (``FILE.0``, ``FILE.1`` … when N > 1), created with
mode 0600 when missing. Without ``--key``, an agent with a chosen ``--id`` keeps
its key where ``aicp.Agent`` does (``aicp.live.keys``): ``$AICP_KEY_DIR/ID.key``,
default ``$XDG_CONFIG_HOME/aicp/keys`` or ``~/.config/aicp/keys``, because the
router binds an id to its first key and would refuse the same id under a new one.

Without ``--id`` each agent's id comes from its key (``agent-`` and 12 hex digits of
the key's SHA-256, ``keys.default_agent_id``), so the same key file gives the same id
on every start and a router that keeps its bindings (``--state``) binds nothing new
when the agent restarts. Without ``--id`` and ``--key`` the keys are kept in the first
default slot of the key directory no other running process holds
(``agent-default-N.key``, ``.i`` suffixes with ``--count``; ``keys.claim_default_slot``):
a restart takes the same slot, hence the same keys and ids; agents started beside it
take the next slots.

Each agent prints one line when it first registers; with ``--count`` above 10, the
first ten do, then a count at each tenth of the fleet and when all are in
(``10000 of 10000 agents registered in 17.3 s``); every registration is still logged at INFO.

SIGINT/SIGTERM stop every agent gracefully: new tasks are refused (the router
retries them elsewhere), running ones get ``--drain-timeout`` seconds to finish
and send their results, then each agent deregisters; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl as ssl_module
import sys
from collections.abc import Iterator

from aicp.live import handlers
from aicp.live.agent import Agent
from aicp.live.client import DEFAULT_URL
from aicp.live.keys import KEY_DIR_ENV, claim_default_slot, default_agent_id, identity_for
from aicp.live.logs import add_logging_arguments, setup_logging
from aicp.live.loop import run_async, tune_gc
from aicp.signing import Identity

log = logging.getLogger("aicp.agent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default=DEFAULT_URL, help=f"router URL, or several comma-separated (a cluster: tried in turn; default {DEFAULT_URL})")
    add("--capability", action="append", default=None, metavar="METHOD", help="capability to serve (repeatable; default text.classify)")
    add("--handler", default="synthetic", choices=handlers.BUILTINS, help="built-in handler for capabilities without one of their own name")
    add("--count", type=int, default=1, help="agents to run in this process (default 1)")
    add("--id", default=None, help="agent id (default: agent-<12 hex digits of its key's SHA-256>, the same for the same key); with --count N, ID-0 … ID-(N-1)")
    add("--key", metavar="FILE", help=f"identity file (created 0600 if missing); FILE.i for each agent when --count > 1; default with --id: ${KEY_DIR_ENV}/ID.key, "
                                      f"without: ${KEY_DIR_ENV}/agent-default-N.key for the first slot N no running process holds; ${KEY_DIR_ENV} defaulting to ~/.config/aicp/keys")
    add("--concurrency", type=int, default=16, help="tasks one agent runs at once (default 16)")
    add("--service-time", default="0", metavar="[DIST:]MS", help="synthetic handler: constant|exponential|lognormal mean in ms (default 0)")
    add("--service-sigma", type=float, default=0.5, metavar="S", help="synthetic handler: a lognormal service time's sigma (default 0.5)")
    add("--fail-prob", type=float, default=0.0, help="synthetic handler: probability a task fails (default 0)")
    add("--connect-concurrency", type=int, default=64, metavar="N",
        help="connection attempts (handshake and registration) in progress at once in this process (default 64)")
    add("--heartbeat", type=float, default=None, metavar="S", help="heartbeat interval (default: what the router asks for)")
    add("--drain-timeout", type=float, default=10.0, metavar="S", help="on SIGINT/SIGTERM, seconds running tasks get to finish (default 10)")
    add("--router-key", default=None, help="expected router public key (default: trust the router's key on each connection)")
    add("--cafile", default=None, help="CA bundle for wss:// URLs")
    add("--seed", type=int, default=None, help="seed for the synthetic handler (agent i of --count draws from seed + i)")
    add("--max-queued", type=int, default=None, metavar="N",
        help="tasks one agent holds, running or waiting for a slot, before it refuses more as overloaded (default 16 x --concurrency)")
    add_logging_arguments(parser)


#: Lock descriptors of the default key slots this process holds (``keys.claim_default_slot``): kept open until it ends.
HELD_SLOTS: list[int] = []


def iter_agents(args: argparse.Namespace) -> Iterator[Agent]:
    """The agents of ``args``, one at a time (each may create its key file on the way)."""
    capabilities = args.capability or ["text.classify"]
    key_file = args.key
    if key_file is None and args.id is None:
        path, lock = claim_default_slot()
        HELD_SLOTS.append(lock)  # held until the process ends
        key_file = str(path)
    ssl_ctx = ssl_module.create_default_context(cafile=args.cafile) if args.url.startswith("wss://") else None
    # One gate for the whole process: N agents started together register a bounded number at a
    # time, so the handshakes in progress finish within their timeout instead of all failing together.
    gate = asyncio.Semaphore(max(1, args.connect_concurrency)) if args.count > 1 else None
    for i in range(args.count):
        if key_file is not None:
            identity = Identity.load_or_create(key_file if args.count == 1 else f"{key_file}.{i}")
            agent_id = default_agent_id(identity) if args.id is None else (args.id if args.count == 1 else f"{args.id}-{i}")
        else:
            agent_id = args.id if args.count == 1 else f"{args.id}-{i}"
            identity = identity_for(agent_id)
        agent = Agent(agent_id, args.url, identity=identity, concurrency=args.concurrency, heartbeat=args.heartbeat,
                      drain_timeout=args.drain_timeout, router_key=args.router_key, ssl=ssl_ctx, connect_gate=gate,
                      **({"max_queued": args.max_queued} if args.max_queued is not None else {}))
        seed = None if args.seed is None else args.seed + i
        for cap in capabilities:
            name = cap if cap in handlers.BUILTINS else args.handler
            if name == "synthetic":
                dist, mean_ms = handlers.parse_service_time(args.service_time)
                agent.handler(cap)(handlers.Synthetic(dist, mean_ms, args.fail_prob, sigma=args.service_sigma, seed=seed))
            else:
                agent.handler(cap)(handlers.builtin(name, args.service_time, args.fail_prob, seed))
        yield agent


def build_agents(args: argparse.Namespace) -> list[Agent]:
    return list(iter_agents(args))


# With --count N, the first LINES_EACH agents print their own line; the rest are counted and
# reported at every tenth of N and once all are in, so a fleet of 10,000 prints about 20 lines.
LINES_EACH = 10


class RegistrationReport:
    """Prints the agents' first registrations: one line each for the first ``LINES_EACH``, then counts.

    O(1) per registration; ``total`` is the number of agents this process runs.
    """

    def __init__(self, total: int, now: float) -> None:
        self.total = total
        self.started = now
        self.seen = 0
        self.next_mark = max(1, total // 10)

    def registered(self, agent: Agent, now: float) -> None:
        self.seen += 1
        client = agent.client
        if self.seen <= LINES_EACH:
            print(f"Agent {client.peer_id} registered with {client.session.router_id} at {client.server_url} "
                  f"(key {client.identity.public_key_text}, capabilities {', '.join(client.session.capabilities)})", flush=True)
        elif self.seen == self.total or self.seen >= self.next_mark:
            print(f"{self.seen} of {self.total} agents registered in {now - self.started:.1f} s", flush=True)
        while self.next_mark <= self.seen:
            self.next_mark += max(1, self.total // 10)


async def _run_agent(agent: Agent, report: RegistrationReport) -> None:
    """Serve until stopped; tell ``report`` when the agent first registers."""
    loop = asyncio.get_running_loop()
    serving = loop.create_task(agent.serve())
    registered = loop.create_task(agent.client.ready.wait())
    try:
        await asyncio.wait({serving, registered}, return_when=asyncio.FIRST_COMPLETED)
        if registered.done():
            report.registered(agent, loop.time())
        await serving
    finally:
        registered.cancel()
        serving.cancel()
        await asyncio.gather(serving, registered, return_exceptions=True)


async def _main(args: argparse.Namespace) -> int:
    """Run every agent until a signal stops them all, or one fails (then stop the rest); 1 if one failed."""
    agents: list[Agent] = []
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        for a in agents:
            a.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_all)
    runners: dict[asyncio.Task[None], Agent] = {}
    report = RegistrationReport(args.count, loop.time())
    # Each agent starts as soon as it is built: the first ones register while later ones still load or create their keys.
    for i, agent in enumerate(iter_agents(args), 1):
        agents.append(agent)
        runners[loop.create_task(_run_agent(agent, report))] = agent
        if i % 32 == 0:
            await asyncio.sleep(0)
    failed = 0
    pending = set(runners)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                log.error("agent %s stopped: %s", runners[t].agent_id, t.exception())
                failed += 1
                stop_all()
    return 1 if failed else 0


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
    if args.service_sigma < 0:
        print("error: --service-sigma must be at least 0", file=sys.stderr)
        return 2
    if args.count > 1:
        tune_gc()  # thousands of agents' connections in one process
    return int(run_async(_main(args)))
