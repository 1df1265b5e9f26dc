"""``aicp bench-core``: cost per operation of the core, next to the raw library call.

Each row times an AICP operation and the plain library call it wraps, in the same
process and run, and prints their ratio, so the core's own overhead is visible and
comparable across machines. Figures are medians of ``--repeat`` timing rounds.

``--agents 100,1000,10000,100000`` adds the growth table of issue 10: for every
strategy and pool size n, the cost of registering one agent into a router that
already holds the others (the mean over registering agents 2..n, one after
another, into fresh routers: at least 20,000 registrations per sample), and of one
task (a submit plus the result of the oldest task in flight, 5,000 per sample)
while n/2 tasks are in flight (at most 5000). Both should stay flat as n grows.
They are CPU seconds of this process (``time.process_time``), so other load on a
shared machine distorts them less than wall time would.

The sizes are compared like with like (``run_scale``): each of the ``--repeat``
rounds takes one sample of every size in turn, so a drift of the machine's speed
between minutes falls on all sizes alike; the growth figure is the median of the
rounds' own ratios (largest size / smallest), shown with their range. The cyclic
garbage collector is off while a sample is timed (it runs between rounds): a full
collection scans every object in the process, the other sizes' routers too, so
with it on a sample would pay for objects that are not part of the size it times.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import tempfile
import time
import timeit
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import nacl.bindings as sodium

from aicp import __version__, strategies
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

#: Tasks in flight while a cycle is timed: half the agents, at most this many.
MAX_IN_FLIGHT = 5000
#: Submit+result cycles per task sample (tens of milliseconds: far above the timer's resolution).
CYCLES_PER_SAMPLE = 5000
#: Agents registered per registration sample, at least: small pools take several routers.
MIN_REGISTRATIONS = 20_000


def _new_router(strategy: str) -> Router:
    """A router with agent ``a0`` whose strategy has already made a choice (so its
    indexes exist and every later registration pays for their upkeep)."""
    router = Router(RouterConfig(max_tasks=MAX_IN_FLIGHT + 10), strategy, random.Random(1))
    router.register_agent("a0", ["m"], 0.0)
    [d] = router.submit("warm-up", "m", 0.0)
    router.result(d.agent_id, "warm-up", True, 0.0)  # type: ignore[union-attr]
    return router


def _register_sample(strategy: str, n: int, min_registrations: int = MIN_REGISTRATIONS) -> float:
    """CPU seconds per agent to register agents a1..a(n-1), one after another, into a
    router that holds the ones before (averaged over enough fresh routers that at least
    ``min_registrations`` agents are registered)."""
    ids = [f"a{i}" for i in range(1, n)]
    caps = ["m"]
    done, elapsed = 0, 0.0
    while done < min_registrations:
        register = _new_router(strategy).register_agent
        t0 = time.process_time()
        for agent_id in ids:
            register(agent_id, caps, 0.0)
        elapsed += time.process_time() - t0
        done += len(ids)
    return elapsed / done


class _TaskLoop:
    """A router with ``n`` agents and min(n/2, ``MAX_IN_FLIGHT``) tasks in flight.

    ``sample`` times one cycle: a submit (the strategy picks an agent among the n) and
    the result of the oldest task in flight, so the number in flight stays the same."""

    def __init__(self, strategy: str, n: int, cycles: int = CYCLES_PER_SAMPLE) -> None:
        self.router = router = _new_router(strategy)
        for i in range(1, n):
            router.register_agent(f"a{i}", ["m"], 0.0)
        self.in_flight: deque[tuple[str, str]] = deque()
        self.counter = iter(range(10**12))
        for _ in range(min(n // 2, MAX_IN_FLIGHT)):
            self._submit()
        self.sample(max(1, cycles // 5))  # warm-up, not reported

    def _submit(self) -> None:
        tid = f"t{next(self.counter)}"
        [d] = self.router.submit(tid, "m", 0.0)
        if not isinstance(d, Dispatch):
            raise RuntimeError(f"the router did not dispatch: {d!r}")
        self.in_flight.append((d.agent_id, tid))

    def sample(self, cycles: int) -> float:
        """CPU seconds per cycle over ``cycles`` cycles."""
        submit, result, oldest = self._submit, self.router.result, self.in_flight.popleft
        t0 = time.process_time()
        for _ in range(cycles):
            submit()
            agent_id, tid = oldest()
            result(agent_id, tid, True, 0.0)
        return (time.process_time() - t0) / cycles


def run_scale(
    sizes: Sequence[int], repeat: int, names: Sequence[str] | None = None, *, cycles: int = CYCLES_PER_SAMPLE, min_registrations: int = MIN_REGISTRATIONS
) -> list[dict[str, Any]]:
    """Registration and per-task cost for every strategy at every pool size.

    Sizes are measured in interleaved rounds, not one after another: round r takes one
    registration sample and one task sample at every size (in turn, forwards on even
    rounds and backwards on odd ones), so a drift of the machine's speed over the run
    weighs on every size alike, and each round gives its own growth ratio. The cyclic
    garbage collector is off inside the timed sections (collected between rounds,
    untimed): a full collection costs time in proportion to every object in the process,
    the other sizes' routers included, which is not a cost of the size being timed.
    """
    sizes = [max(2, n) for n in sizes]
    rows: list[dict[str, Any]] = []
    was_enabled = gc.isenabled()
    try:
        for name in names or strategies.names():
            gc.collect()
            gc.disable()
            loops = {n: _TaskLoop(name, n, cycles) for n in sizes}
            reg: dict[int, list[float]] = {n: [] for n in sizes}
            task: dict[int, list[float]] = {n: [] for n in sizes}
            for r in range(repeat):
                order = sizes if r % 2 == 0 else sizes[::-1]
                for n in order:
                    reg[n].append(_register_sample(name, n, min_registrations) * 1e6)
                for n in order:
                    task[n].append(loops[n].sample(cycles) * 1e6)
                gc.enable()
                gc.collect()
                gc.disable()
            del loops
            rows.extend(
                {
                    "strategy": name,
                    "agents": n,
                    "in_flight": min(n // 2, MAX_IN_FLIGHT),
                    "register_us_per_agent": statistics.median(reg[n]),
                    "task_us": statistics.median(task[n]),
                    "register_us_rounds": reg[n],
                    "task_us_rounds": task[n],
                }
                for n in sizes
            )
            gc.enable()
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
    return rows


def scale_growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy, the growth from the smallest to the largest pool: for registration and
    for a task, the ratio in every round (same round: same stretch of the run) and their median."""
    out = []
    for name in dict.fromkeys(r["strategy"] for r in rows):
        mine = sorted((r for r in rows if r["strategy"] == name), key=lambda r: r["agents"])
        small, large = mine[0], mine[-1]
        entry: dict[str, Any] = {"strategy": name, "from": small["agents"], "to": large["agents"]}
        for key, label in (("register_us_rounds", "register"), ("task_us_rounds", "task")):
            ratios = [b / a for a, b in zip(small[key], large[key], strict=True)]
            entry[f"{label}_growth"] = statistics.median(ratios)
            entry[f"{label}_growth_rounds"] = ratios
        out.append(entry)
    return out


def format_scale_table(rows: list[dict[str, Any]]) -> str:
    sizes = sorted({r["agents"] for r in rows})
    by = {(r["strategy"], r["agents"]): r for r in rows}
    heads = " → ".join(f"{n:,}" for n in sizes)
    lines = [
        f"| strategy | register, µs per agent: {heads} | one task (submit+result), µs: {heads} "
        f"| growth {sizes[0]:,} → {sizes[-1]:,}, register / task: median of rounds (range) |",
        "|---|---|---|---|",
    ]
    for g in scale_growth(rows):
        name = g["strategy"]
        reg = [by[name, n]["register_us_per_agent"] for n in sizes]
        task = [by[name, n]["task_us"] for n in sizes]
        spread = [f"{g[k + '_growth']:.2f}× ({min(g[k + '_growth_rounds']):.2f}–{max(g[k + '_growth_rounds']):.2f})" for k in ("register", "task")]
        lines.append(f"| {name} | {' → '.join(f'{v:.1f}' for v in reg)} | {' → '.join(f'{v:.1f}' for v in task)} | {spread[0]} / {spread[1]} |")
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected agent counts such as 100,1000,10000: {text!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("agent counts must be at least 2")
    return sizes


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'operation':44} {'us/op':>9}   {'raw library call':28} {'us/op':>9} {'ratio':>7}"]
    for r in results:
        lines.append(f"{r['operation']:44} {r['us_per_op']:9.2f}   {r['baseline']:28} {r['baseline_us_per_op']:9.2f} {r['ratio']:7.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=7, help="timing rounds; the median is reported (default 7)")
    parser.add_argument(
        "--agents",
        type=_sizes,
        default=[100],
        help="agents in the routing benchmark (default 100); several, e.g. 100,1000,10000,100000, "
        "add a growth table of registration and per-task cost for every strategy",
    )
    parser.add_argument("--strategy", action="append", default=None, help="strategies in the growth table (repeatable; default: all)")
    parser.add_argument("--scale-only", action="store_true", help="with several --agents: only the growth table, not the per-operation rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> int:
    sizes: list[int] = args.agents
    results: list[dict[str, Any]] = []
    print(f"AICP {__version__} core micro-benchmark, Python {platform.python_version()}, median of {args.repeat} rounds")
    if not (args.scale_only and len(sizes) > 1):
        results = run_benchmarks(args.repeat, sizes[0])
        print(format_table(results))
    scale: list[dict[str, Any]] = []
    if len(sizes) > 1:
        unknown = [n for n in args.strategy or [] if n not in strategies.names()]
        if unknown:
            print(f"unknown strategy {unknown[0]!r}; known: {', '.join(strategies.names())}")
            return 2
        scale = run_scale(sizes, args.repeat, args.strategy)
        print()
        print(
            f"growth with the pool: n/2 tasks in flight (at most {MAX_IN_FLIGHT}), CPU time; {args.repeat} rounds, each one sample "
            f"per size in turn (order alternating), garbage collector off while timing; µs: median of the rounds"
        )
        print(format_scale_table(scale))
    out = args.json or Path("results") / "bench" / f"core-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": __version__, "python": platform.python_version(), "repeat": args.repeat, "results": results, "scale": scale,
           "scale_growth": scale_growth(scale) if scale else []}
    out.write_text(json.dumps(doc, indent=2))
    print(f"written: {out}")
    return 0
