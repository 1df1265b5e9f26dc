"""Helpers for real-socket tests (imported by the tests and by conftest.py): servers on 127.0.0.1 port 0, agents in-process or as subprocesses.

No pytest-asyncio: each test runs its coroutine with ``run(coro)``, bounded by a timeout.
Every subprocess started here is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from aicp.errors import KEY_MISMATCH, ProtocolError
from aicp.live.client import AICPWebSocketClient
from aicp.live.controller import AICPController
from aicp.live.handlers import Handler
from aicp.live.server import AICPWebSocketServer
from aicp.messages import Error, Result, decode_body, decode_frame
from aicp.peer import PeerSession
from aicp.signing import Identity

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run one test coroutine on a fresh loop, failing it if it takes longer than ``timeout``."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[AICPWebSocketServer]:
    kwargs.setdefault("port", 0)
    server = AICPWebSocketServer("127.0.0.1", **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(drain_s=0.0)


@contextlib.asynccontextmanager
async def agent(url: str, agent_id: str, handlers: dict[str, Handler], heartbeat: float | None = None, **kwargs: Any) -> AsyncIterator[AICPWebSocketClient]:
    """An in-process agent, connected and registered, listening (and heart-beating if asked) until the block ends."""
    kwargs.setdefault("backoff_cap_s", 0.2)
    client = AICPWebSocketClient(url, agent_id, **kwargs)
    for method, handler in handlers.items():
        client.register_handler(method, handler)
    await client.connect()
    tasks = [asyncio.get_running_loop().create_task(client.listen())]
    if heartbeat is not None:
        tasks.append(asyncio.get_running_loop().create_task(client.heartbeat_loop(heartbeat)))
    try:
        yield client
    finally:
        await client.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def http_json(url: str) -> Any:
    return json.loads(http_get(url)[2])


def metric_samples(ws_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics of the router at ``ws_url``, parsed: (sample name, sorted labels) -> value."""
    text = http_get(ws_url.replace("ws://", "http://", 1) + "/metrics")[2].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def challenged(url: str, session: PeerSession, **kwargs: Any) -> ClientConnection:
    """A raw WebSocket to the router whose challenge ``session`` has read (it can now register)."""
    ws = await connect(url, **kwargs)
    session.connection_made()
    session.receive(await ws.recv(decode=False), time.time())
    return ws


async def refused_as_taken(url: str, peer_id: str, methods: list[str], what: str, within_s: float = 10.0) -> None:
    """Register ``peer_id`` with a fresh key at ``url`` until the router refuses it with ``key-mismatch``.

    A router learns a binding made elsewhere (another router, a shared store) a round trip
    after it was written, so this retries every 50 ms; ``what`` names the binding in the failure.
    """
    deadline = time.monotonic() + within_s
    while True:
        thief = PeerSession(Identity.generate(), peer_id, "agent", methods)
        ws = await challenged(url, thief)
        await ws.send(thief.register_frame(time.time()), text=True)
        try:
            reply = thief.receive(await ws.recv(decode=False), time.time()).body
        finally:
            await ws.close()
        if isinstance(reply, Error):
            assert reply.code == KEY_MISMATCH, reply
            return
        assert time.monotonic() < deadline, f"{url} never learned {what}"
        await asyncio.sleep(0.05)


async def error_and_close(ws: ClientConnection, session: PeerSession) -> tuple[str, int | None]:
    """Read the router's error frame, wait for the close; return (error code, close code)."""
    rec = session.receive(await ws.recv(decode=False), time.time())
    assert isinstance(rec.body, Error)
    await ws.wait_closed()
    return rec.body.code, ws.close_code


# ----------------------------------------------------------------------------- subprocesses
def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


#: Agents started with --id keep their keys here, never in the real home directory.
KEY_DIR = tempfile.mkdtemp(prefix="aicp-live-keys-")
atexit.register(shutil.rmtree, KEY_DIR, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["AICP_KEY_DIR"] = KEY_DIR
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process whose output lines are collected by a thread, killed at the end of the test."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Block until an output line (from index ``start``) matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"{self.args[1:4]} printed no line matching {pattern!r}; output:\n" + self.output())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class CountingController(AICPController):
    """A controller that also counts every outcome frame it receives, by task id, settled or not.

    ``submit`` ignores a second outcome for a task nobody waits for any more; this counter
    does not, so a test can assert that no duplicate ever reached the caller.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: collections.Counter[str] = collections.Counter()

    def _frame(self, data: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            body = decode_body(decode_frame(data).body)
            if isinstance(body, (Result, Error)) and body.task_id is not None:
                self.outcomes[body.task_id] += 1
        super()._frame(data)


def router_url(proc: Proc, timeout: float = 10.0) -> str:
    """The ws:// URL a router process (``python -m aicp.server``) prints when it listens."""
    return proc.wait_for_line(r"listening on (ws://127\.0\.0\.1:\d+)", timeout).group(1)
