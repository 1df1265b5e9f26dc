"""``aicp bench-core``: cost per operation of the core, next to the raw library call.

Each row times an AICP operation and the plain library call it wraps, in the same
process and run, and prints their ratio, so the core's own overhead is visible and
comparable across machines. Figures are medians of ``--repeat`` timing rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nacl.bindings as sodium

from aicp import __version__
from aicp.live.store import SqliteStore
from aicp.messages import PROTOCOL_VERSION, Task, decode_body, decode_frame, encode, payload, seal
from aicp.peer import PeerSession
from aicp.protocol import RouterProtocol
from aicp.router import Dispatch, Router, RouterConfig
from aicp.signing import CONTEXT, Identity, verify


def _per_op(fn: Callable[[], object], repeat: int, min_time: float = 0.05) -> float:
    """Median seconds per call over ``repeat`` rounds of auto-sized loops."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * min_time / 0.2))
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def run_benchmarks(repeat: int = 7, agents: int = 100) -> list[dict[str, Any]]:
    ident = Identity(bytes(range(32)))
    secret = ident._secret
    body = Task(v=PROTOCOL_VERSION, id="task-000001", sender="ctl-1", ts=1.7e9, method="text.classify", payload=payload({"text": "a short review of a good product"}))
    body_bytes = encode(body)
    signed = CONTEXT + body_bytes
    sig = ident.sign(body_bytes)
    frame = seal(ident, "ctl-1", body)
    as_dict = msgspec.json.decode(body_bytes)
    pk = ident.public_key

    router = Router(RouterConfig(), "power_of_two", random.Random(1))
    for i in range(agents):
        router.register_agent(f"a{i}", ["m"], 0.0)
    pool = router.registry.agents_with("m")
    rng = random.Random(2)
    counter = iter(range(10**12))

    def route_once() -> None:
        tid = str(next(counter))
        [d] = router.submit(tid, "m", 0.0)
        assert isinstance(d, Dispatch)
        router.result(d.agent_id, tid, True, 0.0)

    def choice_once() -> None:
        rng.choice(pool).in_flight += 0

    # The full router path per task: verify+decode the task, dispatch, verify+decode the result, forward.
    proto, tasks = _router_and_tasks()
    it = iter(tasks)

    def router_task() -> None:
        ts, tframe, rframe = next(it)
        proto.frame_received(2, tframe, ts)
        out = proto.frame_received(1, rframe, ts)
        if len(out) != 1 or out[0].data is not rframe:  # type: ignore[union-attr]
            raise RuntimeError(f"router did not forward the result: {out!r}")

    rows = [
        ("sign", lambda: ident.sign(body_bytes), "nacl crypto_sign", lambda: sodium.crypto_sign(signed, secret)),
        ("verify", lambda: verify(pk, body_bytes, sig), "nacl crypto_sign_open", lambda: sodium.crypto_sign_open(sig + signed, pk)),
        ("encode task body", lambda: encode(body), "msgspec encode dict", lambda: msgspec.json.encode(as_dict)),
        ("seal (encode+sign+frame)", lambda: seal(ident, "ctl-1", body), "nacl crypto_sign", lambda: sodium.crypto_sign(signed, secret)),
        ("decode frame+body", lambda: decode_body(decode_frame(frame).body), "msgspec decode untyped", lambda: msgspec.json.decode(frame)),
        (f"route (submit+result, {agents} agents)", route_once, "random.choice", choice_once),
    ]
    results: list[dict[str, Any]] = []
    for name, fn, base_name, base in rows:
        ours, raw = _per_op(fn, repeat), _per_op(base, repeat)
        results.append({"operation": name, "us_per_op": ours * 1e6, "baseline": base_name, "baseline_us_per_op": raw * 1e6, "ratio": ours / raw})
    per_task = _per_op_bounded(router_task, len(tasks), repeat)
    verify_us = float(results[1]["baseline_us_per_op"])
    results.append({"operation": "router: one task end to end (2 verifies)", "us_per_op": per_task * 1e6,
                    "baseline": "2 x nacl crypto_sign_open", "baseline_us_per_op": 2 * verify_us, "ratio": per_task * 1e6 / (2 * verify_us)})
    per_task_state = _router_task_with_state(repeat)
    results.append({"operation": "router: the same with --state (SQLite)", "us_per_op": per_task_state * 1e6,
                    "baseline": "router: one task, no state", "baseline_us_per_op": per_task * 1e6, "ratio": per_task_state / per_task})
    return results


def _router_and_tasks(count: int = 20000) -> tuple[RouterProtocol, list[tuple[float, bytes, bytes]]]:
    """A router with one agent and one controller registered, and ``count`` prepared (task, result) frame pairs."""
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(), "power_of_two", random.Random(3)))
    agent = PeerSession(Identity.generate(), "agent-1", "agent", ["m"])
    ctl = PeerSession(Identity.generate(), "ctl-1", "controller")
    now = 1.7e9
    for conn, peer in ((1, agent), (2, ctl)):
        [challenge] = proto.connection_made(conn, now)
        peer.receive(challenge.data, now)  # type: ignore[union-attr]
        proto.frame_received(conn, peer.register_frame(now), now)
    tasks = []
    for i in range(count):
        ts = now + i * 0.001  # 1000 tasks/s of simulated clock: inside the per-connection rate limit
        tid, tframe = ctl.task_frame("m", payload({"text": "hello"}), ts)
        task_body = Task(v=PROTOCOL_VERSION, id=tid, sender="ctl-1", ts=ts, method="m", payload=payload({"text": "hello"}))
        tasks.append((ts, tframe, agent.result_frame(task_body, payload({"label": "x"}), ts)))
    return proto, tasks


def _router_task_with_state(repeat: int) -> float:
    """Seconds per task with a ``SqliteStore`` sink, its commits included.

    Two records per task (the task's id and its outcome); they are
    committed every 10 tasks, as the live router's 10 ms batches would at 1000 tasks/s.
    """
    with tempfile.TemporaryDirectory(prefix="aicp-bench-state-") as tmp:
        store = SqliteStore.open(Path(tmp) / "state.db", now=0.0)
        try:
            proto, tasks = _router_and_tasks()
            proto.store = store
            number = max(1, len(tasks) // (repeat + 1))
            it = iter(tasks)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                for n in range(number):
                    ts, tframe, rframe = next(it)
                    proto.frame_received(2, tframe, ts)
                    proto.frame_received(1, rframe, ts)
                    if n % 10 == 9:
                        store.flush()
                store.flush()
                times.append((time.perf_counter() - t0) / number)
            if store.errors or store.dropped:
                raise RuntimeError(f"state file: {store.errors} errors, {store.dropped} dropped")
            return statistics.median(times)
        finally:
            store.close()


def _per_op_bounded(fn: Callable[[], object], available: int, repeat: int) -> float:
    """Like _per_op for a function that consumes prepared inputs: never asks for more than exist."""
    number = max(1, available // (repeat + 1))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'operation':44} {'us/op':>9}   {'raw library call':28} {'us/op':>9} {'ratio':>7}"]
    for r in results:
        lines.append(f"{r['operation']:44} {r['us_per_op']:9.2f}   {r['baseline']:28} {r['baseline_us_per_op']:9.2f} {r['ratio']:7.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=7, help="timing rounds; the median is reported (default 7)")
    parser.add_argument("--agents", type=int, default=100, help="agents in the routing benchmark (default 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> int:
    results = run_benchmarks(args.repeat, args.agents)
    print(f"AICP {__version__} core micro-benchmark, Python {platform.python_version()}, median of {args.repeat} rounds")
    print(format_table(results))
    out = args.json or Path("results") / "bench" / f"core-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"version": __version__, "python": platform.python_version(), "repeat": args.repeat, "results": results}, indent=2))
    print(f"written: {out}")
    return 0
