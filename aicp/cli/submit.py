"""``aicp submit METHOD JSON``: run one task through the router and print its verified result.

Exit status: 0 with the result JSON on stdout; 1 with ``error: CODE: message`` on
stderr when the task ends in an error outcome; 2 when the router cannot be reached
or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import ssl as ssl_module
import sys
import time
from typing import Any

from aicp import errors
from aicp.live.client import CONNECT_ERRORS, DEFAULT_URL, split_urls
from aicp.live.controller import AICPController
from aicp.live.keys import identity_for
from aicp.live.loop import run_async
from aicp.signing import Identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", help="capability to call, e.g. text.classify")
    parser.add_argument("payload", help="task payload as JSON, e.g. '{\"text\": \"hello\"}'")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"router URL, or several comma-separated: tried in turn (default {DEFAULT_URL})")
    parser.add_argument("--timeout", type=float, default=30.0, help="task deadline in seconds (default 30)")
    parser.add_argument("--key", metavar="FILE", help="controller identity file (created 0600 if missing; default with --id: $AICP_KEY_DIR/ID.key, else a new key)")
    parser.add_argument("--id", default=None, help="controller id (default: controller-<random>, with a new key)")
    parser.add_argument("--task-id", default=None, help="task id: the same id submitted again gets the same outcome")
    parser.add_argument("--router-key", default=None, help="expected router public key (default: trust the router's key on each connection)")
    parser.add_argument("--cafile", default=None, help="CA bundle for wss:// URLs")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="submit N times in sequence over one connection and print round-trip latency percentiles to stderr")


async def _submit(args: argparse.Namespace, obj: Any) -> Any:
    if args.key:
        identity = Identity.load_or_create(args.key)
    elif args.id:  # a chosen id keeps its key, as agents do: the router binds the id to it
        identity = identity_for(args.id)
    else:
        identity = Identity.generate()
    ssl_ctx = ssl_module.create_default_context(cafile=args.cafile) if args.url.startswith("wss://") else None
    routers = len(split_urls(args.url))  # several: each is tried once, in turn
    # Without --id the id is made up for this run (controller-<random>), and ephemeral: the router frees it once we are gone.
    ctl = AICPController(args.url, args.id, identity, router_key=args.router_key, ssl=ssl_ctx, reconnect=False, max_reconnect_attempts=routers - 1)
    await ctl.start(retry=routers > 1)
    try:
        if args.repeat <= 1:
            return await ctl.submit(args.method, obj, timeout=args.timeout, task_id=args.task_id)
        samples = []
        result = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = await ctl.submit(args.method, obj, timeout=args.timeout)
            samples.append(time.perf_counter() - t0)
        samples.sort()
        pct = {p: samples[min(len(samples) - 1, int(p / 100 * len(samples)))] * 1000 for p in (50, 90, 99)}
        print(f"{len(samples)} round trips of {args.method}: median {pct[50]:.3f} ms, p90 {pct[90]:.3f} ms, p99 {pct[99]:.3f} ms, max {samples[-1] * 1000:.3f} ms", file=sys.stderr)
        return result
    finally:
        await ctl.close()


def run(args: argparse.Namespace) -> int:
    try:
        obj = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"error: payload is not JSON: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_async(_submit(args, obj))
    except errors.TaskError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except CONNECT_ERRORS as exc:
        code = exc.code if isinstance(exc, errors.ProtocolError) else "unreachable"
        print(f"error: {code}: cannot use router at {args.url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
