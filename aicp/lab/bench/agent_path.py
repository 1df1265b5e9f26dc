"""One agent's path per task, in one process: what it costs outside the rest of the system.

    python -m aicp.lab.bench.agent_path --tasks 2000            # CPU µs per task (process_time)
    python -m aicp.lab.bench.agent_path --callgrind 200,1200    # instructions per task (valgrind)

N task frames, signed by a controller session, are fed one per loop turn to an agent client's
real connection (``DirectClientConnection.data_received``, as uvloop hands it a read): the
inbound fast path, the session's checks (signature verified), the handler (the bench's
synthetic one, 0 ms), the signed result with its handler time, ``FrameBatcher`` and
``frame_texts``, and a real write to a WebSocket server on 127.0.0.1 in the same process. After
the run every result is decoded (each task answered once, ok, with its handler time) and the
first and last are checked as the controller would (signature, task, requester).

``--callgrind A,B`` runs the harness under ``valgrind --tool=callgrind`` with A and B tasks
and prints (Ir(B) - Ir(A)) / (B - A): instructions per task, start-up cancelled out, the same
on every run of the same code whatever else the machine runs (libsodium's share included:
about 0.93 M instructions for the agent's one verify and one sign, and 0.26 M for the
harness's signing of the task). Live, the same code runs with cold caches, once or twice per
wake-up, and costs several times what it costs here (docs/PERFORMANCE.md); the instruction
count is how a change too small for ``aicp bench`` to resolve is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from aicp.live.client import AICPWebSocketClient
from aicp.live.handlers import Synthetic
from aicp.live.inbound import DirectClientConnection, DirectServerConnection
from aicp.live.links import FrameBatcher, frame_texts
from aicp.live.loop import run_async
from aicp.messages import Result, decode_body, decode_frame, payload
from aicp.peer import READY, PeerSession
from aicp.signing import Identity

METHOD = "bench.synthetic"


async def run_tasks(n: int) -> dict[str, Any]:
    """Feed ``n`` tasks through one agent client; every result is checked. CPU seconds of the loop, and the handler times signed."""
    controller = PeerSession(Identity.generate(), "lg", "controller")
    controller.router_id = "router"
    controller.state = READY
    agent = AICPWebSocketClient("ws://127.0.0.1:1", "ag", Identity.generate(), concurrency=16)
    agent.register_handler(METHOD, Synthetic())
    agent.session.router_id = "router"
    agent.session.state = READY
    body = payload({"text": "x" * 64})
    sent: set[str] = set()
    reads = []
    for _ in range(n):
        tid, frame = controller.task_frame(METHOD, body, time.time(), timeout_ms=10000.0)
        sent.add(tid)
        reads.append(frame_texts([frame], masked=False))  # as the router writes it
    frames: list[bytes] = []
    done = asyncio.Event()

    async def handler(ws: DirectServerConnection) -> None:
        def collect(data: bytes, binary: bool) -> None:  # checked after the run: the server's share stays small
            frames.append(data)
            if len(frames) == n:
                done.set()

        ws.direct(collect)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, create_connection=DirectServerConnection) as server:  # type: ignore[arg-type]
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, create_connection=DirectClientConnection) as ws:
            assert isinstance(ws, DirectClientConnection)
            agent.ws = ws
            agent._batch = FrameBatcher(ws, agent._dropped)
            agent.ready.set()
            ws.direct(agent._message, check_utf8=False)
            cpu0 = time.process_time()
            for data in reads:
                ws.data_received(data)
                await asyncio.sleep(0)  # the loop turn that writes the result
            cpu = time.process_time() - cpu0
            if n:
                await asyncio.wait_for(done.wait(), 30.0)
    results = [decode_body(decode_frame(f).body) for f in frames]
    for f in frames[:1] + frames[-1:]:
        controller.receive(f, time.time())  # signature, task and requester checked as the controller does
    if ({getattr(r, "task_id", None) for r in results} != sent or any(not isinstance(r, Result) or not r.ok or r.service_ms is None for r in results)
            or agent.completed != n):
        raise RuntimeError("a result is missing, failed or carries no handler time")
    return {"tasks": n, "cpu_s": cpu, "service_ms": [r.service_ms for r in results if isinstance(r, Result)]}


def callgrind_ir(n: int) -> int:
    """Instructions of one run of this harness with ``n`` tasks under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "aicp.lab.bench.agent_path", "--tasks", str(n)]
        subprocess.run(cmd, check=True, capture_output=True, env=os.environ.copy())
        match = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise RuntimeError("no summary line in callgrind's output")
        return int(match.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000, help="tasks to feed (default 2000)")
    p.add_argument("--callgrind", default=None, metavar="A,B", help="instructions per task: runs under callgrind with A and B tasks")
    args = p.parse_args()
    if args.callgrind:
        a, b = (int(x) for x in args.callgrind.split(","))
        ir_a, ir_b = callgrind_ir(a), callgrind_ir(b)
        print(f"instructions: {ir_a} ({a} tasks), {ir_b} ({b} tasks): {(ir_b - ir_a) / (b - a):,.0f} per task")
        return
    got = run_async(run_tasks(args.tasks))
    if args.tasks:
        print(f"{got['tasks']} tasks: {1e6 * got['cpu_s'] / got['tasks']:.1f} µs of CPU per task (one process, hot caches)")


if __name__ == "__main__":
    main()
