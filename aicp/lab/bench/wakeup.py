"""The CPU of one loopback wake-up on this machine: the floor under every frame a router handles.

``python -m aicp.lab.bench.wakeup --rate 336 --duration 5`` starts an echo server (an
``asyncio.Protocol`` on uvloop, as the router's loop, that writes back whatever it reads)
and a client that sends it one small message every ``1 / rate`` seconds over 127.0.0.1
TCP, open loop, so that, as for a router at ~170 tasks/s, every message is its own event-loop
wake-up. The server's CPU per message (``/proc`` schedstat, net of its idle CPU measured
just before over as long) is the cost of one wake-up, one read and one write with no work
in between: what a router pays per frame before it does anything with it.

``aicp bench --routers 2 --hop-cost N`` runs it after its pairs, at the rate of frames a
cross-router task adds (two routers × one more frame in and out each, at the task rate)
and prints the extra CPU of a cross-router task next to it (docs/CLUSTER.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

from aicp.lab.bench.noise import schedstat_s
from aicp.live.loop import run_async

MESSAGE = b"x" * 400  # about a task frame's size


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` so far, to the nanosecond (``/proc/PID/task/*/schedstat``)."""
    return schedstat_s(pid, 0)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file, "w") as f:
        f.write(str(port))
    await asyncio.Event().wait()


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = 0

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


async def _send(port: int, rate: float, duration: float) -> int:
    """Send one message every ``1 / rate`` s for ``duration`` s; returns how many were sent (all echoed back)."""
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_connection(_Sink, "127.0.0.1", port)
    count = int(rate * duration)
    start = loop.time() + 0.05
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        transport.write(MESSAGE)
    deadline = loop.time() + 5.0
    while sink.received < count * len(MESSAGE) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    transport.close()
    return count


def measure(rate: float, duration: float, idle_s: float = 2.0) -> dict[str, float]:
    """Start the echo server, measure its idle CPU, then its CPU per message at ``rate``; stops it."""
    port_file = f"/tmp/aicp-wakeup-{os.getpid()}.port"
    server = subprocess.Popen([sys.executable, "-m", "aicp.lab.bench.wakeup", "--serve", port_file], stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15.0
        while not (os.path.exists(port_file) and os.path.getsize(port_file)):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            port = int(f.read())
        with socket.create_connection(("127.0.0.1", port)):  # first connection: the server's imports and set-up are done
            pass
        time.sleep(0.2)
        c0, t0 = thread_cpu_s(server.pid), time.monotonic()
        time.sleep(idle_s)
        idle = (thread_cpu_s(server.pid) - c0) / (time.monotonic() - t0)
        c0, t0 = thread_cpu_s(server.pid), time.monotonic()
        count = run_async(_send(port, rate, duration))
        used, wall = thread_cpu_s(server.pid) - c0, time.monotonic() - t0
    finally:
        server.kill()
        server.wait()
        if os.path.exists(port_file):
            os.unlink(port_file)
    return {"rate": rate, "messages": count, "us_per_message": 1e6 * max(0.0, used - idle * wall) / count,
            "us_per_message_gross": 1e6 * used / count, "idle_cpu_percent": 100.0 * idle}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aicp.lab.bench.wakeup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=336.0, help="messages per second (default: two per task at 168 tasks/s)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        run_async(_serve(args.serve))
        return 0
    print(json.dumps(measure(args.rate, args.duration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
