"""A real nats-server with JetStream for tests: on 127.0.0.1, a free port, a temporary store dir, stopped by PID."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicp.lab.bench.live import free_port
from aicp.live.store_jetstream import nats_server_binary


class JetStreamServer:
    """``nats-server -js`` on 127.0.0.1:``port`` storing in ``store_dir`` (``jetstream=False``: a plain server); ``start()`` again keeps both."""

    def __init__(self, port: int, store_dir: Path, jetstream: bool = True) -> None:
        self.port = port
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.binary = nats_server_binary()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, "nats-server exited at start"
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


class NatsServer(JetStreamServer):
    """A plain ``nats-server`` (no JetStream) on 127.0.0.1:``port``; ``restart()`` keeps the port."""

    def __init__(self, port: int) -> None:
        super().__init__(port, Path(), jetstream=False)


@pytest.fixture
def jetstream(tmp_path: Path) -> Iterator[JetStreamServer]:
    """``nats-server -js`` on a free port, its store under ``tmp_path``; killed after the test."""
    server = JetStreamServer(free_port(), tmp_path / "js")
    server.start()
    try:
        yield server
    finally:
        server.stop()
