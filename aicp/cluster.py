"""Several routers as one, sans I/O: summaries, forwarded tasks and remote outcomes in; frames for other routers out.

``ClusterNode`` sits next to one router's ``RouterProtocol`` (see docs/CLUSTER.md).
Two-level routing: every router publishes a ``Summary`` of its local agents per
capability (agents, slots, busy slots) every ``publish_interval_s``; each other
router holds, per (router, capability), one *remote candidate* in its registry
(``Router.remote_ids``), so its strategy chooses between local agents and remote
routers. A task sent to a remote candidate is forwarded verbatim; the remote router
runs it on one of its local agents in one attempt and sends the one outcome back.
The router a task was submitted to (its owner) keeps the deadline, the retries and
the outcome, so every task ends exactly once even if the remote router dies.

``ClusterView`` is the router-level half (summaries, remote candidates, peer expiry): it
touches only the ``Router``, so the simulator (``aicp.sim.cluster``) runs it over simulated
links. ``ClusterNode`` adds the protocol-level half (frames in and out) for live drivers.

A live driver (NATS: ``aicp.live.cluster``; in memory: tests) calls::

    out = node.start(now)
    out = node.summary_received(data, now)             # a Publish from another router
    out = node.task_received(origin, data, timeout_s, now, key, method, fingerprint)  # a Forward "task"
    out = node.outcome_received(origin, key, data, now, ok)                         # a Forward "outcome"
    # (or task_in / outcome_in: the same without the flush; the driver then sends take_forwards() itself)
    out = node.isolated(now)                           # the link to the others is down
    out = node.on_timer(now)                           # at node.next_deadline()
    out += node.flush()                                # after any RouterProtocol call of its own

and carries out each output: ``Send``/``Close`` as for ``RouterProtocol``,
``Publish`` to every other router, ``Forward`` to ``forward.router``.

Costs: a summary is O(local agents × their capabilities) to build, every
``publish_interval_s``, never per decision; applying a received one is
O(capabilities in it); expiring peers is O(routers) per timer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

import msgspec

from aicp import errors
from aicp.protocol import Forward, Output, RouterProtocol
from aicp.registry import Status
from aicp.router import Router

T = TypeVar("T")

#: Remote peers are named with "~", which no real peer id may contain (``messages.Id``).
REMOTE_MARK: Final = "~"


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    publish_interval_s: float = 0.05  # a summary this often: the staleness of the remote view
    peer_timeout_s: float = 0.5  # a router not heard from for this long is lost (its tasks fail over)
    #: a forwarded task gets this much longer at the remote router than the owner's attempt has left, so the
    #: owner's own timeout decides (the same way in every driver); the remote router's late failure is dropped
    forward_grace_s: float = 0.01


class CapacitySummary(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One capability at one router: active local agents, their slots (sum of concurrency), busy slots (sum of in-flight)."""

    agents: int
    slots: int
    busy: int


class Summary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    router: str
    seq: int
    caps: dict[str, CapacitySummary]
    draining: bool = False


class Publish(msgspec.Struct, frozen=True, gc=False):
    """Send ``data`` (an encoded ``Summary``) to every other router."""

    data: bytes


ClusterOutput = Output | Publish | Forward

_summary_decoder = msgspec.msgpack.Decoder(Summary)
_summary_encoder = msgspec.msgpack.Encoder()


def encode_summary(s: Summary) -> bytes:
    return _summary_encoder.encode(s)


def decode_summary(data: bytes) -> Summary:
    """Raises ``msgspec.DecodeError`` or ``msgspec.ValidationError`` on bad input."""
    return _summary_decoder.decode(data)



def candidate_id(router: str, method: str) -> str:
    """The registry id of router ``router``'s capacity for ``method``."""
    return REMOTE_MARK + router + REMOTE_MARK + method


def requester_id(router: str) -> str:
    """The peer id under which router ``router``'s forwarded tasks are pending here."""
    return REMOTE_MARK + router


class _PeerRouter:
    __slots__ = ("alive", "caps", "last_seen", "name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = -1
        self.last_seen = 0.0
        self.alive = False
        self.caps: set[str] = set()  # methods with a live remote candidate here


class ClusterView(Generic[T]):
    """The router-level half, shared by every driver: this router's summary, and the others' as remote candidates.

    It touches only the ``Router``. ``add_candidate(id, router)`` is called when a remote
    candidate is first made (the protocol adds a peer for it); ``lose_candidate(id, now, reason)``
    takes it out of service (its tasks fail over) and returns what the driver must carry out.
    """

    def __init__(self, router: Router, name: str, config: ClusterConfig, add_candidate: Callable[[str, str], None],
                 lose_candidate: Callable[[str, float, str], list[T]]) -> None:
        if REMOTE_MARK in name:
            raise errors.LocalError(f"a router id may not contain {REMOTE_MARK!r}")
        self.router = router
        self.name = name
        self.config = config
        self._add_candidate = add_candidate
        self._lose_candidate = lose_candidate
        self.peers: dict[str, _PeerRouter] = {}
        self._seq = 0
        self.next_publish: float | None = None
        self.counters: dict[str, int] = {"summaries_sent": 0, "summaries_received": 0, "summaries_bad": 0, "summaries_old": 0, "routers_lost": 0}

    def live_routers(self) -> list[str]:
        return sorted(p.name for p in self.peers.values() if p.alive)

    def summary(self, draining: bool = False) -> Summary:
        """This router's local agents per capability. O(local agents × their capabilities)."""
        reg = self.router.registry
        caps: dict[str, CapacitySummary] = {}
        for cap in reg.capabilities():
            remote = self.router.remote_ids.get(cap)
            pool = reg.agents_with(cap)
            agents = [a for a in pool if a.agent_id not in remote] if remote else pool
            if agents:
                caps[cap] = CapacitySummary(len(agents), sum(a.concurrency for a in agents), sum(a.in_flight for a in agents))
        self._seq += 1
        return Summary(self.name, self._seq, caps, draining)

    def next_deadline(self) -> float | None:
        """The next publish or peer expiry (the router's own deadlines are not included). O(routers)."""
        timeout = self.config.peer_timeout_s
        times = [p.last_seen + timeout for p in self.peers.values() if p.alive]
        if self.next_publish is not None:
            times.append(self.next_publish)
        return min(times) if times else None

    def publish_due(self, now: float, draining: bool = False) -> Summary | None:
        """The summary to publish now, if one is due (and schedules the next)."""
        if self.next_publish is None or now < self.next_publish:
            return None
        self.next_publish = now + self.config.publish_interval_s
        self.counters["summaries_sent"] += 1
        return self.summary(draining)

    def expire(self, now: float) -> list[T]:
        """Lose every router not heard from for ``peer_timeout_s``."""
        out: list[T] = []
        limit = now - self.config.peer_timeout_s
        for peer in self.peers.values():
            if peer.alive and peer.last_seen <= limit:
                out.extend(self.lose(peer.name, now, f"router {peer.name} silent for {self.config.peer_timeout_s:g} s"))
        return out

    def apply(self, s: Summary, now: float) -> list[T]:
        """Take in another router's summary. Older or repeated ones (by ``seq``) are ignored.

        A router that restarted begins again at seq 1: a summary after it was lost is taken whatever its seq.
        O(capabilities in the summary + this router's candidates of it).
        """
        if s.router == self.name or REMOTE_MARK in s.router:
            return []
        self.counters["summaries_received"] += 1
        peer = self.peers.get(s.router)
        if peer is None:
            peer = self.peers[s.router] = _PeerRouter(s.router)
        if peer.alive and s.seq <= peer.seq:
            self.counters["summaries_old"] += 1
            return []
        peer.seq = s.seq
        peer.last_seen = now
        peer.alive = True
        out: list[T] = []
        router = self.router
        if s.draining:  # no new tasks to it; those running there finish (or fail over when it goes silent)
            for method in peer.caps:
                router.drain_agent(candidate_id(s.router, method), now)
            return out
        offered = {m: c for m, c in s.caps.items() if c.agents > 0 and c.slots > 0}
        for method in list(peer.caps):
            if method not in offered:
                peer.caps.discard(method)
                out.extend(self._lose_candidate(candidate_id(s.router, method), now, f"router {s.router} has no agent for it"))
        for method, c in offered.items():
            vid = candidate_id(s.router, method)
            state = router.registry.get(vid)
            if state is None or state.status is Status.DEAD or method not in peer.caps:
                self._add_candidate(vid, s.router)
                router.register_agent(vid, [method], now, concurrency=c.slots, remote=True)
                state = router.registry.get(vid)
                assert state is not None
                peer.caps.add(method)
            state.concurrency = max(1, c.slots)
            router.heartbeat(vid, now)
            # Own tasks there are counted exactly; other routers' are as of the summary.
            own = router.count_on(vid)
            state.in_flight = own + max(0, c.busy - own)
        return out

    def lose(self, name: str, now: float, reason: str) -> list[T]:
        """Router ``name`` is gone (silent, or the link to it is down): its candidates die, their tasks fail over."""
        peer = self.peers.get(name)
        if peer is None or not peer.alive:
            return []
        peer.alive = False
        self.counters["routers_lost"] += 1
        out: list[T] = []
        for method in sorted(peer.caps):
            out.extend(self._lose_candidate(candidate_id(name, method), now, reason))
        peer.caps.clear()
        return out

    def isolated(self, now: float, reason: str = "cut off from the cluster") -> list[T]:
        """This router lost its link to the others: route locally until summaries come back."""
        out: list[T] = []
        for peer in list(self.peers.values()):
            out.extend(self.lose(peer.name, now, reason))
        return out


class ClusterNode:
    """One router's membership in a cluster, at the protocol level: frames in and out. Named by ``proto.config.router_id``."""

    def __init__(self, proto: RouterProtocol, config: ClusterConfig | None = None) -> None:
        self.proto = proto
        self.router = proto.router
        self.config = config or ClusterConfig()
        self.name = proto.config.router_id
        self.view: ClusterView[Output] = ClusterView(
            proto.router, self.name, self.config, lambda vid, router: proto.add_remote(vid, router, "agent"), proto.remote_lost
        )
        self.counters: dict[str, int] = self.view.counters
        self.counters.update({"tasks_forwarded_out": 0, "tasks_forwarded_in": 0, "outcomes_out": 0, "outcomes_in": 0})
        #: router -> the id its forwarded tasks are pending under here, its stand-in added to the protocol once
        #: (O(routers heard from); stand-ins are never removed from the protocol)
        self._requesters: dict[str, str] = {}

    @property
    def peers(self) -> dict[str, _PeerRouter]:
        return self.view.peers

    def live_routers(self) -> list[str]:
        return self.view.live_routers()

    def summary(self) -> Summary:
        return self.view.summary(self.proto.draining)

    def next_deadline(self) -> float | None:
        times = [t for t in (self.proto.next_deadline(), self.view.next_deadline()) if t is not None]
        return min(times) if times else None

    # ------------------------------------------------------------------ events
    def start(self, now: float) -> list[ClusterOutput]:
        """Begin publishing (the first summary goes out at once)."""
        self.view.next_publish = now
        return self.on_timer(now)

    def on_timer(self, now: float) -> list[ClusterOutput]:
        out: list[ClusterOutput] = list(self.proto.on_timer(now))
        summary = self.view.publish_due(now, self.proto.draining)
        if summary is not None:
            out.append(Publish(_summary_encoder.encode(summary)))
        out.extend(self.view.expire(now))
        return self.flush(out)

    def _requester(self, origin: str) -> str | None:
        """The requester id of router ``origin``'s forwarded tasks (its stand-in made on first use); None for a name that is not another router's. O(1)."""
        rid = self._requesters.get(origin)
        if rid is None:
            if origin == self.name or REMOTE_MARK in origin:
                return None
            rid = self._requesters[origin] = requester_id(origin)
            self.proto.add_remote(rid, origin, "router")
        return rid

    def summary_received(self, data: bytes, now: float) -> list[ClusterOutput]:
        """Another router's ``Publish``."""
        try:
            s = _summary_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.counters["summaries_bad"] += 1
            return []
        self._requester(s.router)
        return self.flush(list(self.view.apply(s, now)))

    def task_received(self, origin: str, data: bytes, timeout_s: float, now: float, key: str = "", method: str = "",
                      fingerprint: bytes = b"") -> list[ClusterOutput]:
        """Router ``origin`` forwards a task frame it owns: run it here, once, within ``timeout_s`` (plus ``forward_grace_s``).

        ``key``, ``method``, ``fingerprint``: the ``Forward``'s, so the frame is not decoded again (see ``submit_forwarded``).
        """
        return self.flush(list(self.task_in(origin, data, timeout_s, now, key, method, fingerprint)))

    def task_in(self, origin: str, data: bytes, timeout_s: float, now: float, key: str = "", method: str = "",
                fingerprint: bytes = b"") -> list[Output]:
        """``task_received`` without the flush: only the protocol's outputs; frames for other routers wait for ``take_forwards``.

        For a driver that sends those from its own hook (the live one: ``AICPWebSocketServer.cluster_flush``), so a
        forwarded task's path from the frame to its ``Send`` builds no second list and no ``ClusterOutput`` mix.
        """
        rid = self._requester(origin)
        if rid is None:
            return []
        self.counters["tasks_forwarded_in"] += 1
        return self.proto.submit_forwarded(rid, data, max(0.001, timeout_s) + self.config.forward_grace_s, now, key, method, fingerprint)

    def outcome_received(self, origin: str, key: str, data: bytes, now: float, ok: bool = False) -> list[ClusterOutput]:
        """Router ``origin`` sends the outcome of task ``key`` that this router forwarded to it (``ok``: the ``Forward``'s)."""
        return self.flush(list(self.outcome_in(origin, key, data, now, ok)))

    def outcome_in(self, origin: str, key: str, data: bytes, now: float, ok: bool = False) -> list[Output]:
        """``outcome_received`` without the flush (see ``task_in``)."""
        self.counters["outcomes_in"] += 1
        return self.proto.remote_outcome(origin, key, data, now, ok)

    def router_lost(self, name: str, now: float, reason: str) -> list[ClusterOutput]:
        """The driver knows ``name`` is gone: do not wait for the timeout."""
        return self.flush(list(self.view.lose(name, now, reason)))

    def isolated(self, now: float, reason: str = "cut off from the cluster") -> list[ClusterOutput]:
        """This router lost its link to the others: route locally until summaries come back."""
        return self.flush(list(self.view.isolated(now, reason)))

    def take_forwards(self) -> list[Forward]:
        """The frames for other routers the protocol made since the last call, counted. O(their number)."""
        proto = self.proto
        fwds = proto.forwards
        if not fwds:
            return []
        proto.forwards = []
        counters = self.counters
        for fwd in fwds:
            counters["tasks_forwarded_out" if fwd.kind == "task" else "outcomes_out"] += 1
        return fwds

    def flush(self, out: list[ClusterOutput] | None = None) -> list[ClusterOutput]:
        """``out`` plus the frames for other routers the protocol made meanwhile."""
        out = out if out is not None else []
        out.extend(self.take_forwards())
        return out
