"""Fixtures for cluster tests: a real nats-server on a free port, stopped by PID after the test."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))

from live_helpers import Proc, python_cmd
from nats_helpers import NatsServer, jetstream  # noqa: F401  (jetstream: a fixture)

from aicp.lab.bench.live import free_port

pytest.importorskip("nats")


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
