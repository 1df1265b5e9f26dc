"""A load-generator process for ``aicp bench``: one controller connection, signed tasks, verified outcomes.

Run by the benchmark orchestrator as ``python -m aicp.lab.bench.loadgen --out FILE ...``.

* **Open loop** (``--rate R``): Poisson arrivals at R tasks/s. Each task has an
  *intended* send time fixed in advance, and its latency is measured from that
  time (or from its actual send, if the generator sent it up to 1 ms early because
  timers have millisecond resolution), so a stalled router or a busy load generator
  shows up as latency instead of silently lowering the offered load (no
  coordinated omission).
* **Schedule** (``--schedule FILE``): open loop on a given arrival sequence
  (``aicp bench --scenario`` and ``--arrivals``; aicp/lab/bench/schedule.py): each
  task's intended time, method, deadline and payload size come from the file.
* **Closed loop** (``--concurrency C``): C tasks in flight; each completion sends
  the next one, from the frame callback. Latency is measured from the send.

Every outcome is verified (signature and binding to its task) before it counts.
Samples are written as numpy arrays (``.npz``): intended/sent/done times,
outcome codes, and which tasks never got an outcome (lost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from msgspec import Raw
from websockets.asyncio.client import connect

from aicp.lab.bench.floor import io_calls
from aicp.lab.bench.schedule import Schedule
from aicp.live.inbound import DirectClientConnection
from aicp.live.links import FrameBatcher
from aicp.live.loop import run_async
from aicp.messages import Error, RegisterAck, Result, payload
from aicp.peer import PeerSession
from aicp.signing import Identity

EARLY_S = 0.001  # how early an open-loop send may go out (timer resolution)
OK = 0  # outcome code index 0 is a verified result; others index into `codes`
PENDING = -1
NAN = float("nan")


class Recorder:
    """Per-task times and outcome codes (small ints), kept in plain lists while the run goes.

    ``new`` and ``finish`` are O(1) and cost a list append or store each: a NumPy
    scalar store costs several times a list's, and they ran for every task. The
    NumPy arrays (``intended``, ``sent``, ``done``, ``outcome``) are built on each read,
    after the run.
    """

    def __init__(self) -> None:
        self._intended: list[float] = []
        self._sent: list[float] = []
        self._done: list[float] = []
        self._outcome: list[int] = []
        self.codes: list[str] = ["ok"]
        self.n = 0
        self.finished = 0  # tasks with an outcome
        self.index: dict[str, int] = {}
        self.duplicates = 0

    @property
    def intended(self) -> np.ndarray:
        return np.array(self._intended, dtype=float)

    @property
    def sent(self) -> np.ndarray:
        return np.array(self._sent, dtype=float)

    @property
    def done(self) -> np.ndarray:
        return np.array(self._done, dtype=float)

    @property
    def outcome(self) -> np.ndarray:
        return np.array(self._outcome, dtype=np.int16)

    @property
    def pending(self) -> int:
        """Tasks recorded with no outcome yet."""
        return self.n - self.finished

    def code_index(self, code: str) -> int:
        try:
            return self.codes.index(code)
        except ValueError:
            self.codes.append(code)
            return len(self.codes) - 1

    def new(self, task_id: str, intended: float, sent: float) -> None:
        self.index[task_id] = self.n
        self.n += 1
        self._intended.append(intended)
        self._sent.append(sent)
        self._done.append(NAN)
        self._outcome.append(PENDING)

    def finish(self, task_id: str, now: float, code: str) -> int | None:
        i = self.index.get(task_id)
        if i is None:
            return None
        if self._outcome[i] != PENDING:
            self.duplicates += 1  # a second outcome for one task: must never happen
            return None
        self._outcome[i] = OK if code == "ok" else self.code_index(code)
        self._done[i] = now
        self.finished += 1
        return i


def poisson_gaps(seed: int, rate: float) -> Iterator[float]:
    """The open loop's gaps between intended send times (s): exponential, from ``random.Random(seed)``.

    One definition for the load generator and for whoever regenerates its arrivals from
    the seed (``aicp calibrate``'s ``same`` column)."""
    rng = random.Random(seed)
    while True:
        yield rng.expovariate(rate)


async def run_loadgen(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    wall = time.time
    session = PeerSession(Identity.generate(), args.id, "controller")
    body = payload({"text": "x" * max(0, args.payload_bytes)})
    plan = Schedule.load(args.schedule) if args.schedule else None
    rec = Recorder()
    verify_failures = 0
    closed_loop = False  # set once the closed loop starts: outcomes then send the next tasks

    async with connect(args.url, compression=None, max_size=2**20, ping_interval=None, open_timeout=10, max_queue=None, create_connection=DirectClientConnection) as ws:
        assert isinstance(ws, DirectClientConnection)
        session.connection_made()
        session.receive(await ws.recv(decode=False), wall())
        await ws.send(session.register_frame(wall()), text=True)
        ack = session.receive(await ws.recv(decode=False), wall())
        if not isinstance(ack.body, RegisterAck):
            raise RuntimeError(f"registration refused: {ack.body}")

        def on_message(data: bytes, binary: bool) -> None:  # each frame as it is parsed (aicp.live.inbound)
            nonlocal verify_failures
            now = clock()
            try:
                got = session.receive(data, wall())
            except Exception:
                verify_failures += 1
                return
            msg = got.body
            if isinstance(msg, Result):
                tid, code = msg.task_id, "ok"
            elif isinstance(msg, Error) and msg.task_id is not None:
                tid, code = msg.task_id, msg.code
            else:
                return
            if rec.finish(tid, now, code) is not None and closed_loop:
                send_next()  # closed loop: this slot's next task, from the callback (no future, no task switch)

        ws.direct(on_message, check_utf8=False)
        batch = FrameBatcher(ws)
        cpu0 = time.process_time()
        io0 = io_calls(psutil.Process())
        start = clock() + (max(0.05, args.start_at - wall()) if args.start_at else 0.05)
        start_wall = wall() - clock() + start
        end = start + args.warmup + args.duration
        timeout_ms = args.task_timeout * 1000.0

        async def send_one(intended: float, method: str = args.method, task_body: Raw = body, deadline_ms: float | None = timeout_ms) -> str:
            tid, frame = session.task_frame(method, task_body, wall(), timeout_ms=deadline_ms)
            rec.new(tid, intended, clock())
            if batch.writable():
                batch.add(frame)  # one write per loop iteration for every task sent in it
            else:
                batch.flush()
                await ws.send(frame, text=True)
            return tid

        slots_left = args.concurrency
        slots_done = asyncio.Event()
        slow_sends: set[asyncio.Task[None]] = set()

        async def send_slow(frame: bytes) -> None:
            await ws.send(frame, text=True)

        def send_next() -> None:
            """Closed loop: one slot sends its next task, or stops after ``end``."""
            nonlocal slots_left
            now = clock()
            if now >= end:
                slots_left -= 1
                if slots_left == 0:
                    slots_done.set()
                return
            tid, frame = session.task_frame(args.method, body, wall(), timeout_ms=timeout_ms)
            rec.new(tid, now, now)
            if batch.writable():
                batch.add(frame)
            else:  # the socket is backed up: flow control in a task (the order of independent tasks does not matter)
                batch.flush()
                t = loop.create_task(send_slow(frame))
                slow_sends.add(t)
                t.add_done_callback(slow_sends.discard)

        if plan is not None:
            for t_rel, method, task_body, deadline_ms in plan.tasks():
                t = start + t_rel
                delay = t - clock() - EARLY_S
                if delay > 0.0:
                    await asyncio.sleep(delay)
                await send_one(t, method, task_body, deadline_ms)
        elif args.rate:
            t = start
            gaps = poisson_gaps(args.seed, args.rate)
            while True:
                t += next(gaps)
                if t >= end:
                    break
                # Event-loop timers have millisecond resolution, so wake up to EARLY_S before the
                # intended time and send then; latency is measured from min(intended, sent), so an
                # early send is never credited and a late one is always charged.
                delay = t - clock() - EARLY_S
                if delay > 0.0:
                    await asyncio.sleep(delay)
                await send_one(t)
        else:
            await asyncio.sleep(max(0.0, start - clock()))
            closed_loop = True
            for _ in range(args.concurrency):
                send_next()
            # A task that never gets an outcome stalls its slot until this bound, and counts as lost below.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(end - clock() + args.task_timeout + 5.0):
                    await slots_done.wait()
        # drain: every task sent must get its outcome; wait up to the task timeout plus slack
        drain_until = clock() + (plan.max_deadline_s(args.task_timeout) if plan is not None else args.task_timeout) + 5.0
        while clock() < drain_until and rec.pending:
            await asyncio.sleep(0.01)
        cpu_s = time.process_time() - cpu0
        io1 = io_calls(psutil.Process())
        wall_s = clock() - start

    n = rec.n
    outcome = rec.outcome
    np.savez_compressed(
        args.out,
        intended=rec.intended - start,
        sent=rec.sent - start,
        done=rec.done - start,
        outcome=outcome,
        task_ids=np.array(list(rec.index), dtype=str),  # in submission order: to join a router trace (aicp bench --record)
    )
    meta = {
        "id": args.id,
        "codes": rec.codes,
        "submitted": n,
        "lost": int(np.sum(outcome == PENDING)),
        "duplicate_outcomes": rec.duplicates,
        "verify_failures": verify_failures,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "mode": "open" if (args.rate or plan is not None) else "closed",
        "cpu_s": cpu_s,
        "read_calls": io1[0] - io0[0],
        "write_calls": io1[1] - io0[1],
        "wall_s": wall_s,
        "start_wall": start_wall,  # time.time() at this generator's time 0: its times + this = the router's clock
        "start_clock": start,  # perf_counter() at time 0 (CLOCK_MONOTONIC, as aicp.lab.bench.gateway_legs reads it)
    }
    Path(str(args.out) + ".json").write_text(json.dumps(meta))
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--id", default="loadgen-0")
    p.add_argument("--method", default="bench.synthetic")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: tasks/s (Poisson)")
    p.add_argument("--concurrency", type=int, default=16, help="closed loop: tasks in flight")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--task-timeout", type=float, default=10.0)
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--schedule", type=Path, default=None, help="open loop on this arrival schedule (.npz, aicp/lab/bench/schedule.py)")
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time (epoch s) of the schedule's time 0 (default: now)")
    args = p.parse_args()
    run_async(run_loadgen(args))


if __name__ == "__main__":
    main()
