"""An agent in a few lines: ``Agent``, its handler decorator, ``run()`` and ``serve()``.

::

    from aicp import Agent

    agent = Agent("classifier-1", url="ws://127.0.0.1:8765")

    @agent.handler("text.classify")
    async def classify(payload):  # a plain def works too
        return {"label": "positive" if "great" in payload["text"] else "neutral"}

    agent.run()  # blocks until SIGINT/SIGTERM, then finishes running tasks and leaves

``Agent`` is a thin layer over ``AICPWebSocketClient``. What it adds:

* a key kept per agent id (``aicp.live.keys``): ``$AICP_KEY_DIR/<id>.key``, default
  ``$XDG_CONFIG_HOME/aicp/keys/<id>.key`` or ``~/.config/aicp/keys/<id>.key``, created
  0600 on first start and reused after, so the router, which binds an id to its first
  key, lets a restarted agent back in. ``identity=``, ``key_file=`` or ``key_dir=``
  override it;
* ``@agent.handler(method)`` for sync and async functions. A sync handler runs on the
  event loop (fast for microsecond work, but it holds up heartbeats while it runs);
  pass ``in_thread=True`` for blocking work. An exception in a handler becomes a
  signed failed result (``agent-failed`` for the caller), never a dead agent;
* ``run()``: blocks, handles SIGINT and SIGTERM with a graceful stop (a second
  signal skips the drain); ``await serve()`` does the same inside a loop you own,
  until ``stop()``.

A graceful stop refuses new tasks with a signed failed result (the router retries
them on another agent if it has one), waits up to ``drain_timeout`` seconds for
running ones to finish and send their results, then deregisters and closes. Cancelling ``serve()`` closes at once, without draining.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl as ssl_module
from collections.abc import Callable
from typing import Any, TypeVar

from aicp.live.client import DEFAULT_URL, AICPWebSocketClient
from aicp.live.keys import identity_for
from aicp.live.logs import setup_logging
from aicp.live.loop import run_async
from aicp.signing import Identity

log = logging.getLogger("aicp.live.agent")

H = TypeVar("H", bound=Callable[..., Any])


class Agent:
    """One agent id, its key, its handlers, and a self-healing connection to the router."""

    def __init__(
        self,
        agent_id: str,
        url: str = DEFAULT_URL,
        *,
        identity: Identity | None = None,
        key_file: str | os.PathLike[str] | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        concurrency: int = 16,
        heartbeat: float | None = None,
        drain_timeout: float = 10.0,
        router_key: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        **client_options: Any,
    ) -> None:
        """``heartbeat``: seconds between lease renewals (default: what the router asks for).
        ``client_options`` go to ``AICPWebSocketClient`` (``max_queued``, ``backoff_cap_s``, …).
        """
        if identity is None:
            identity = identity_for(agent_id, key_file=key_file, key_dir=key_dir)
        self.client = AICPWebSocketClient(url, agent_id, identity, concurrency=concurrency, router_key=router_key, ssl=ssl, **client_options)
        self.heartbeat = heartbeat
        self.drain_timeout = drain_timeout
        self._stop: asyncio.Event | None = None
        self._force = asyncio.Event()  # set by a second stop(): leave without waiting for running tasks
        self._stop_requested = False

    @property
    def agent_id(self) -> str:
        return self.client.peer_id

    @property
    def identity(self) -> Identity:
        return self.client.identity

    @property
    def url(self) -> str:
        return self.client.server_url

    def handler(self, method: str, *, in_thread: bool = False) -> Callable[[H], H]:
        """Decorator: serve ``method`` with the decorated function (sync or async); returns it unchanged.

        The function gets the task's decoded JSON payload and returns a JSON-encodable value.
        """

        def register(fn: H) -> H:
            self.client.register_handler(method, fn, in_thread=in_thread)
            return fn

        return register

    async def serve(self) -> None:
        """Connect (retrying), serve tasks and renew the lease until ``stop()``; then drain and leave.

        Raises ``errors.ProtocolError`` if the router refuses the registration for good
        (``key-mismatch``, ``not-allowed``, …).
        """
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self.client.closing = self.client.draining = False  # serving again after a stop
        loop = asyncio.get_running_loop()
        serving = loop.create_task(self._connect_and_serve())
        stopping = loop.create_task(self._stop.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done():
                serving.result()  # the refusal or bug that ended it
                return
            log.info("%s: stopping; %d task(s) running", self.agent_id, self.client.running)
            draining = loop.create_task(self.client.drain(self.drain_timeout))
            forced = loop.create_task(self._force.wait())
            try:
                await asyncio.wait({draining, forced}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                draining.cancel()
                forced.cancel()
                await asyncio.gather(draining, forced, return_exceptions=True)
            if self.client.running:
                log.warning("%s: leaving with %d task(s) still running; cancelling them", self.agent_id, self.client.running)
        finally:
            await self.client.close()
            for t in (serving, stopping):
                t.cancel()
            await asyncio.gather(serving, stopping, return_exceptions=True)
            self._stop = None
            self._stop_requested = False

    async def _connect_and_serve(self) -> None:
        await self.client.connect_with_retry()
        log.info(
            "agent %s registered at %s (key %s; capabilities %s)",
            self.agent_id,
            self.url,
            self.identity.public_key_text,
            ", ".join(self.client.session.capabilities) or "none",
        )
        await self.client.serve(self.heartbeat)

    def stop(self) -> None:
        """Ask ``serve()`` (or ``run()``) to stop gracefully; a second call skips the drain. Call it from the loop's thread."""
        if self._stop is not None and self._stop.is_set():
            self._force.set()
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def run(self, log_level: str = "INFO") -> None:
        """Serve until SIGINT or SIGTERM, then stop gracefully; blocks. Runs its own event loop (uvloop if installed).

        Logs to stderr at ``log_level`` unless logging is already configured.
        """
        if not logging.getLogger().handlers:
            setup_logging(log_level)
        run_async(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals on this platform
                continue
            installed.append(sig)
        try:
            await self.serve()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def __repr__(self) -> str:
        return f"Agent({self.agent_id!r}, url={self.url!r}, key={self.identity.public_key_text})"
