"""Several routers as one, sans I/O: summaries, forwarded tasks and remote outcomes in; frames for other routers out.

``ClusterNode`` sits next to one router's ``RouterProtocol`` (see docs/CLUSTER.md).
Two-level routing: every router publishes a ``Summary`` of its local agents per
capability (agents, slots, busy slots) every ``publish_interval_s``; each other
router holds, per (router, capability), one *remote candidate* in its registry
(``AgentState.remote``), so its strategy chooses between local agents and remote
routers. A task sent to a remote candidate is forwarded verbatim; the remote router
runs it on one of its local agents in one attempt and sends the one outcome back.
The router a task was submitted to (its owner) keeps the deadline, the retries and
the outcome, so every task ends exactly once even if the remote router dies.

A driver (NATS live, SimPy in the simulator) calls::

    out = node.start(now)
    out = node.summary_received(data, now)             # a Publish from another router
    out = node.task_received(origin, data, timeout_s, now)
    out = node.outcome_received(origin, key, data, now)
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

from typing import Final

import msgspec

from aicp import errors
from aicp.protocol import Forward, Output, RouterProtocol
from aicp.registry import Status

#: Remote peers are named with "~", which no real peer id may contain (``messages.Id``).
REMOTE_MARK: Final = "~"


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    publish_interval_s: float = 0.05  # a summary this often: the staleness of the remote view
    peer_timeout_s: float = 0.5  # a router not heard from for this long is lost (its tasks fail over)


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


class ClusterNode:
    """One router's membership in a cluster. Routers are told apart by ``proto.config.router_id``."""

    def __init__(self, proto: RouterProtocol, config: ClusterConfig | None = None) -> None:
        self.proto = proto
        self.router = proto.router
        self.config = config or ClusterConfig()
        self.name = proto.config.router_id
        if REMOTE_MARK in self.name:
            raise errors.LocalError(f"a router id may not contain {REMOTE_MARK!r}")
        self.peers: dict[str, _PeerRouter] = {}
        self._seq = 0
        self._next_publish: float | None = None
        self.counters: dict[str, int] = {
            "summaries_sent": 0,
            "summaries_received": 0,
            "summaries_bad": 0,
            "summaries_old": 0,
            "tasks_forwarded_out": 0,
            "tasks_forwarded_in": 0,
            "outcomes_out": 0,
            "outcomes_in": 0,
            "routers_lost": 0,
        }

    # ------------------------------------------------------------------ queries
    def live_routers(self) -> list[str]:
        return sorted(p.name for p in self.peers.values() if p.alive)

    def summary(self) -> Summary:
        """This router's local agents per capability. O(local agents × their capabilities)."""
        reg = self.router.registry
        caps: dict[str, CapacitySummary] = {}
        for cap in reg.capabilities():
            agents = reg.local_agents_with(cap)
            if agents:
                caps[cap] = CapacitySummary(len(agents), sum(a.concurrency for a in agents), sum(a.in_flight for a in agents))
        self._seq += 1
        return Summary(self.name, self._seq, caps, self.proto.draining)

    def next_deadline(self) -> float | None:
        times = [t for t in (self.proto.next_deadline(), self._next_publish) if t is not None]
        timeout = self.config.peer_timeout_s
        times.extend(p.last_seen + timeout for p in self.peers.values() if p.alive)
        return min(times) if times else None

    # ------------------------------------------------------------------ events
    def start(self, now: float) -> list[ClusterOutput]:
        """Begin publishing (the first summary goes out at once)."""
        self._next_publish = now
        return self.on_timer(now)

    def on_timer(self, now: float) -> list[ClusterOutput]:
        out: list[ClusterOutput] = list(self.proto.on_timer(now))
        if self._next_publish is not None and now >= self._next_publish:
            out.append(Publish(_summary_encoder.encode(self.summary())))
            self.counters["summaries_sent"] += 1
            self._next_publish = now + self.config.publish_interval_s
        limit = now - self.config.peer_timeout_s
        for peer in self.peers.values():
            if peer.alive and peer.last_seen <= limit:
                out.extend(self._lose(peer, now, f"router {peer.name} silent for {self.config.peer_timeout_s:g} s"))
        return self.flush(out)

    def summary_received(self, data: bytes, now: float) -> list[ClusterOutput]:
        """Another router's ``Publish``. Older or repeated summaries (by ``seq``) are ignored.

        A router that restarted begins again at seq 1: a summary after it was lost is taken whatever its seq.
        """
        try:
            s = _summary_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.counters["summaries_bad"] += 1
            return []
        if s.router == self.name or REMOTE_MARK in s.router:
            return []
        self.counters["summaries_received"] += 1
        peer = self.peers.get(s.router)
        if peer is None:
            peer = self.peers[s.router] = _PeerRouter(s.router)
            self.proto.add_remote(requester_id(s.router), s.router, "router")
        if peer.alive and s.seq <= peer.seq:
            self.counters["summaries_old"] += 1
            return []
        peer.seq = s.seq
        peer.last_seen = now
        peer.alive = True
        out: list[ClusterOutput] = []
        router = self.router
        offered = {m: c for m, c in s.caps.items() if c.agents > 0 and c.slots > 0} if not s.draining else {}
        for method in list(peer.caps):
            if method not in offered:
                peer.caps.discard(method)
                out.extend(self.proto.remote_lost(candidate_id(s.router, method), now, f"router {s.router} has no agent for it"))
        for method, c in offered.items():
            vid = candidate_id(s.router, method)
            state = router.registry.get(vid)
            if state is None or state.status is Status.DEAD or method not in peer.caps:
                self.proto.add_remote(vid, s.router, "agent")
                router.register_agent(vid, [method], now, concurrency=c.slots, remote=True)
                state = router.registry.get(vid)
                assert state is not None
                peer.caps.add(method)
            state.concurrency = max(1, c.slots)
            router.heartbeat(vid, now)
            # Own tasks there are counted exactly; other routers' are as of the summary.
            own = router.count_on(vid)
            state.in_flight = own + max(0, c.busy - own)
        return self.flush(out)

    def task_received(self, origin: str, data: bytes, timeout_s: float, now: float) -> list[ClusterOutput]:
        """Router ``origin`` forwards a task frame it owns: run it here, once, within ``timeout_s``."""
        if origin == self.name or REMOTE_MARK in origin:
            return []
        self.counters["tasks_forwarded_in"] += 1
        if origin not in self.peers:
            self.peers[origin] = _PeerRouter(origin)
        self.proto.add_remote(requester_id(origin), origin, "router")
        return self.flush(list(self.proto.submit_forwarded(requester_id(origin), data, max(0.001, timeout_s), now)))

    def outcome_received(self, origin: str, key: str, data: bytes, now: float) -> list[ClusterOutput]:
        """Router ``origin`` sends the outcome of task ``key`` that this router forwarded to it."""
        self.counters["outcomes_in"] += 1
        return self.flush(list(self.proto.remote_outcome(origin, key, data, now)))

    def router_lost(self, name: str, now: float, reason: str) -> list[ClusterOutput]:
        """The driver knows ``name`` is gone (e.g. no responders): do not wait for the timeout."""
        peer = self.peers.get(name)
        return self.flush(self._lose(peer, now, reason)) if peer is not None and peer.alive else []

    def isolated(self, now: float, reason: str = "cut off from the cluster") -> list[ClusterOutput]:
        """This router lost its link to the others: route locally until summaries come back."""
        out: list[ClusterOutput] = []
        for peer in self.peers.values():
            if peer.alive:
                out.extend(self._lose(peer, now, reason))
        return self.flush(out)

    def flush(self, out: list[ClusterOutput] | None = None) -> list[ClusterOutput]:
        """``out`` plus the frames for other routers the protocol made meanwhile."""
        out = out if out is not None else []
        for fwd in self.proto.take_forwards():
            self.counters["tasks_forwarded_out" if fwd.kind == "task" else "outcomes_out"] += 1
            out.append(fwd)
        return out

    # ------------------------------------------------------------------ internals
    def _lose(self, peer: _PeerRouter, now: float, reason: str) -> list[ClusterOutput]:
        peer.alive = False
        self.counters["routers_lost"] += 1
        out: list[ClusterOutput] = []
        for method in sorted(peer.caps):
            out.extend(self.proto.remote_lost(candidate_id(peer.name, method), now, reason))
        peer.caps.clear()
        return out
