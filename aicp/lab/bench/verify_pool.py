"""What signature checks on threads cost and give, in one process: ``python -m aicp.lab.bench.verify_pool``.

The router core is fed the same prepared task and result frames, 64 at a time like a
closed loop at concurrency 64, once with the checks made inline and once through
``VerifierPool`` with 1 and 2 threads. CPU per task (all threads, ``process_time``)
shows the hand-over's cost; wall time per task shows the gain when spare cores exist.
Medians of ``--rounds`` rounds, the variants interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

from aicp.live.loop import run_async
from aicp.live.verifying import VerifierPool
from aicp.messages import PROTOCOL_VERSION, Task, payload
from aicp.peer import PeerSession
from aicp.protocol import Output, ProtocolConfig, RouterProtocol, Verification
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

NOW = 1.7e9
BURST = 64


def _world(tasks: int) -> tuple[RouterProtocol, list[tuple[bytes, bytes]]]:
    config = ProtocolConfig(rate_per_s=1e12, rate_burst=1e12)
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(), "round_robin", random.Random(3)), config)
    agent, ctl = PeerSession(Identity.generate(), "agent-1", "agent", ["m"]), PeerSession(Identity.generate(), "ctl-1", "controller")
    for conn, peer in ((1, agent), (2, ctl)):
        [challenge] = proto.connection_made(conn, NOW)
        peer.receive(challenge.data, NOW)  # type: ignore[union-attr]
        proto.frame_received(conn, peer.register_frame(NOW), NOW)
    frames = []
    for _ in range(tasks):
        tid, task = ctl.task_frame("m", payload({"text": "hello"}), NOW)
        body = Task(v=PROTOCOL_VERSION, id=tid, sender="ctl-1", ts=NOW, method="m", payload=payload({"text": "hello"}))
        frames.append((task, agent.result_frame(body, payload({"label": "x"}), NOW)))
    return proto, frames


async def one_round(threads: int, tasks: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per task."""
    proto, frames = _world(tasks)
    out: list[Output] = []

    def apply(conn: int, data: bytes | str, v: Verification | None) -> None:
        out.extend(proto.frame_received(conn, data, NOW, v))

    pool = VerifierPool(proto, apply, threads) if threads else None

    async def feed(conn: int, batch: list[bytes]) -> None:
        for data in batch:
            if pool is None:
                apply(conn, data, None)
            else:
                pool.submit(conn, data.decode())  # text frames arrive as str
        while pool is not None and pool.inbox:
            await asyncio.sleep(0.0005)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(0, tasks, BURST):
        chunk = frames[i : i + BURST]
        await feed(2, [t for t, _ in chunk])
        await feed(1, [r for _, r in chunk])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if pool is not None:
        pool.close()
    if proto.counters["outcomes_completed"] != tasks:
        raise RuntimeError(f"only {proto.counters['outcomes_completed']} of {tasks} tasks completed")
    return 1e6 * cpu / tasks, 1e6 * wall / tasks


async def main_async(rounds: int, tasks: int) -> None:
    results: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
    for _ in range(rounds):
        for threads in results:
            results[threads].append(await one_round(threads, tasks))
    for threads, rows in results.items():
        where = "inline" if threads == 0 else f"{threads} thread(s)"
        print(f"checks {where:12} CPU per task {statistics.median(r[0] for r in rows):6.0f} µs   wall per task {statistics.median(r[1] for r in rows):6.0f} µs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=4000)
    args = p.parse_args()
    run_async(main_async(args.rounds, args.tasks))


if __name__ == "__main__":
    main()
