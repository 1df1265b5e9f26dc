"""``aicp gateway``: the HTTP control plane and A2A front door (FastAPI on uvicorn), in front of a router.

It keeps its controller identity in ``--key FILE`` (created 0600 if missing; default
``$AICP_KEY_DIR/gateway.key``), so a restarted gateway is the same controller and
finds the outcomes the router kept for it. Without ``--api-keys`` it serves anyone
and therefore refuses to listen on anything but loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Final

from aicp.live.client import DEFAULT_URL
from aicp.live.keys import KEY_DIR_ENV, default_key_dir
from aicp.live.logs import add_logging_arguments, setup_logging
from aicp.live.loop import run_async, tune_gc

log = logging.getLogger("aicp.gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default=DEFAULT_URL, help=f"router URL (default {DEFAULT_URL})")
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; others need --api-keys)")
    add("--port", type=int, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    add("--key", metavar="FILE", default=None, help="controller identity file (created 0600 if missing; default $AICP_KEY_DIR/gateway.key)")
    add("--id", default=None, help="controller id (default gateway-<key fingerprint>)")
    add("--router-key", default=None, help="expected router public key (default: trust the router's key)")
    add("--api-keys", metavar="FILE", default=None, help="bearer API keys, one 'TOKEN NAME METHOD...' per line")
    add("--rate", type=float, default=0.0, metavar="N/S", help="task submissions per second per API key (default 0: no limit)")
    add("--burst", type=float, default=None, metavar="N", help="burst per API key (default: one second's worth)")
    add("--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body (default 1 MiB)")
    add("--max-running", type=int, default=10_000, help="tasks running through this gateway at once (default 10000)")
    add("--progress", choices=["async", "all", "none"], default="async",
        help="which tasks get the router's dispatched/retried events (one signed frame per attempt): async (default) only those whose id the "
        "caller gets before the outcome (respond-async, A2A streaming), all, or none")
    add("--no-progress", action="store_true", help="the same as --progress none")
    add("--public-url", default=None, help="base URL written into Agent Cards (default: the request's own)")
    add_logging_arguments(parser)


#: where gateways before 2026-11-28 kept their key when ``AICP_KEY_DIR`` was not set (every other role used ``default_key_dir()``)
LEGACY_KEY_FILE: Final = Path("~/.aicp/keys/gateway.key")


def default_key_file() -> Path:
    """``gateway.key`` in the key directory every role uses (``aicp.live.keys.default_key_dir``).

    A key already kept at the old place (``LEGACY_KEY_FILE``) is used while none exists at the new one,
    so an upgraded gateway stays the same controller and still finds its outcomes at the router.
    """
    path = default_key_dir() / "gateway.key"
    legacy = LEGACY_KEY_FILE.expanduser()
    if not os.environ.get(KEY_DIR_ENV) and not path.exists() and legacy.exists():
        return legacy
    return path


def _loopback(host: str) -> bool:
    from aicp.gateway.auth import LOOPBACK_HOSTS

    return host in LOOPBACK_HOSTS


def settle_heap() -> None:
    """Take what the gateway built before serving out of the garbage collector's walks, and make full walks rare.

    FastAPI, pydantic, uvicorn and the A2A SDK leave some 80,000 objects that live as
    long as the process. Every full (generation 2) collection walked them all, with the
    finished tasks: 20-90 ms with the loop paused (on this shared VM), the first one after
    some 2,000 tasks, which alone made the p99 of ``aicp bench --via gateway`` 50+ ms
    against 6-9 ms direct (traced hop by hop, with ``gc.callbacks``). ``gc.freeze`` moves them to the permanent generation that
    collections skip; ``tune_gc`` asks for a full collection after 1,000 young ones instead
    of 10 (the finished tasks the store keeps are what remains for it to walk).
    """
    gc.collect()
    gc.freeze()
    tune_gc()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.json_logs)
    if args.api_keys is None and not _loopback(args.host):
        print(f"aicp gateway: refusing to listen on {args.host} without --api-keys (anyone could submit tasks)", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from aicp.gateway.app import create_app
        from aicp.gateway.auth import KeyFileError
        from aicp.gateway.core import GatewayConfig
    except ImportError as exc:
        print(f"aicp gateway: {exc}; install the extra: pip install 'aicp[gateway]'", file=sys.stderr)
        return 2
    config = GatewayConfig(
        router_url=args.url,
        key_file=str(args.key or default_key_file()),
        gateway_id=args.id,
        router_key=args.router_key,
        api_keys=args.api_keys,
        rate=args.rate,
        burst=args.burst,
        max_body_bytes=args.max_body,
        max_running=args.max_running,
        public_url=args.public_url,
        progress="none" if args.no_progress else args.progress,
    )
    try:
        app = create_app(config)
    except (KeyFileError, OSError) as exc:
        print(f"aicp gateway: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    # proxy_headers off: nothing here reads the client address, and uvicorn's ProxyHeadersMiddleware would wrap every request
    kwargs: dict[str, object] = {"log_level": "warning", "access_log": False, "lifespan": "on", "timeout_graceful_shutdown": 5, "proxy_headers": False}
    try:  # httptools, not h11 (several times the CPU per request), writing each answer in one syscall
        from aicp.gateway.http import IN_PROTOCOL, CoalescingHttpToolsProtocol, LegsHttpToolsProtocol
        from aicp.gateway.legs import LEGS

        kwargs["http"] = CoalescingHttpToolsProtocol if LEGS is None else LegsHttpToolsProtocol
        if not IN_PROTOCOL:
            print(f"aicp gateway: uvicorn {uvicorn.__version__} is not a release the in-protocol POST /tasks was tested with; "
                  "every request takes the ASGI path", file=sys.stderr)
    except ImportError:
        pass
    server = uvicorn.Server(uvicorn.Config(app, **kwargs))  # type: ignore[arg-type]

    async def serve() -> None:
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            log.info("AICP gateway listening on http://%s:%d (router %s)", args.host, port, args.url)
            settle_heap()
        await task

    run_async(serve())
    return 0
