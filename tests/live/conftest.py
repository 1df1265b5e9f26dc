"""Fixtures for real-socket tests; the helpers themselves are in live_helpers.py."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
from live_helpers import Proc, python_cmd
from nats_helpers import jetstream  # noqa: F401  (a fixture: nats-server -js for the state tests)


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
