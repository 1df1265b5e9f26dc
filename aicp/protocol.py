"""The router's side of the wire protocol, sans I/O: frames in, frames out.

``RouterProtocol`` wraps a ``Router`` with connections, the registration
handshake, signature checks, freshness and replay rules, and task bookkeeping
by controller. A driver calls::

    out = proto.connection_made(conn, now)      # -> [Send(challenge)]
    out = proto.frame_received(conn, data, now)
    out = proto.connection_lost(conn, now)
    out = proto.on_timer(now)                   # at proto.next_deadline()

and carries out each ``Send`` (write ``data`` to ``conn`` as one text frame)
and ``Close`` (close ``conn`` with ``code``). Errors from peers never escape:
they become error frames, counters and, for registration, a close.

Forwarded tasks and results are the peer's exact bytes: the router never
re-encodes a frame it did not sign.

State that outlives the process (bindings, seen ids, outcomes; ``aicp.state``) is
reported to ``proto.store`` as it changes and given back with ``restore`` before the
first connection. The core itself never reads or writes it anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import secrets
from collections.abc import Callable
from typing import Final, Literal

import msgspec

from aicp import errors, trace
from aicp.messages import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    AnyBody,
    Challenge,
    Deregister,
    Error,
    Frame,
    Goaway,
    Heartbeat,
    Progress,
    Register,
    RegisterAck,
    Result,
    Task,
    decode_body,
    decode_frame,
    seal,
)
from aicp.ratelimit import SourceLimiter, TokenBucket
from aicp.replay import OutcomeCache, ReplayCache
from aicp.router import ACCEPTED, NOT_ASSIGNED, Action, AgentDown, Completed, Dispatch, Failed, Router
from aicp.signing import Identity, check_public_key, decode_public_key, decode_signature, verify
from aicp.state import Binding, Seen, Snapshot, StateSink, StoredOutcome

# WebSocket close codes the router uses.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_LEASE_EXPIRED: Final = 4000
CLOSE_REPLACED: Final = 4001

VerifyPolicy = Literal["every-hop", "edge"]


class ProtocolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    router_id: str = "router"
    window_s: float = 60.0  # freshness: |ts - now| <= window_s
    max_frame_bytes: int = MAX_FRAME_BYTES
    #: Before registration only a register frame is expected (a few kB even with 256 capabilities):
    #: a smaller cap keeps an unauthenticated peer from spending the router's CPU on a huge frame.
    max_handshake_bytes: int = 64 * 1024
    replay_cache_size: int = 1_000_000
    outcome_cache_size: int = 100_000
    max_peers: int = 100_000  # id->key bindings remembered
    allowlist: frozenset[str] | None = None  # public keys (text form) admitted; None admits all
    rate_per_s: float = 20_000.0  # per-connection message rate ...
    rate_burst: float = 5_000.0  # ... and burst, as a token bucket
    connect_rate_per_s: float = 50.0  # new connections per source address per second ...
    connect_burst: float = 200.0  # ... and burst (a whole fleet of agents on one host may start at once)
    max_sources: int = 10_000  # source addresses whose connection rate is remembered
    verify: VerifyPolicy = "every-hop"


class Send(msgspec.Struct, frozen=True, gc=False):
    conn: int
    data: bytes


class Close(msgspec.Struct, frozen=True, gc=False):
    conn: int
    code: int
    reason: str


Output = Send | Close


class Forward(msgspec.Struct, frozen=True, gc=False):
    """Cluster mode (``aicp.cluster``): hand ``data``, a signed frame kept verbatim, to router ``router``.

    ``kind`` "task": run the task there, within ``timeout_s``; "outcome": the one outcome
    of task ``key`` that ``router`` forwarded here. Drivers collect these with
    ``take_forwards()``; a router outside a cluster never makes one.

    What the sending router already read from the frame travels beside it, so the receiving
    router need not decode it again (routers of a cluster trust each other): a task's
    ``method`` and ``fingerprint``; for an outcome, ``ok`` says it is the verified, successful
    result of task ``key`` (anything else is decoded by the owner).
    """

    router: str
    kind: Literal["task", "outcome"]
    key: str
    data: bytes
    timeout_s: float = 0.0
    method: str = ""
    fingerprint: bytes = b""
    ok: bool = False


class Verification:
    """One signature check that a driver may run off its event loop: see ``RouterProtocol.prepare_verify``.

    ``run()`` touches nothing but this object, so it may run on any thread; libsodium
    releases the GIL while it checks. ``done`` is set after ``error``, so a reader that
    sees ``done`` sees the verdict.
    """

    __slots__ = ("conn", "data", "done", "error", "frame", "key_raw", "key_text", "sig")

    def __init__(self, conn: int, data: bytes, frame: Frame, key_text: str, key_raw: bytes, sig: bytes) -> None:
        self.conn = conn
        self.data = data
        self.frame = frame
        self.key_text = key_text
        self.key_raw = key_raw
        self.sig = sig
        self.error: errors.VerifyError | None = None
        self.done = False

    def run(self) -> None:
        try:
            verify(self.key_raw, self.frame.body, self.sig)
        except errors.VerifyError as exc:
            self.error = exc
        self.done = True


class _Conn:
    __slots__ = ("bucket", "closed", "id", "nonce", "peer")

    def __init__(self, conn_id: int, nonce: str, now: float, burst: float) -> None:
        self.id = conn_id
        self.nonce: str | None = nonce
        self.peer: _Peer | None = None
        self.bucket = TokenBucket(burst, now)
        self.closed = False


class _Peer:
    """A bound id. An ephemeral one is freed once it is idle (no connection, no pending task) past ``hold_until``."""

    __slots__ = ("conn", "ephemeral", "hold_until", "key_raw", "key_text", "owned", "peer_id", "progress", "role", "router", "tasks")

    def __init__(self, peer_id: str, key_text: str, key_raw: bytes, role: str, router: str | None = None,
                 ephemeral: bool = False, owned: bool = True) -> None:
        self.peer_id = peer_id
        self.key_text = key_text
        self.key_raw = key_raw
        self.role = role
        self.conn: _Conn | None = None
        self.router = router  # cluster mode: the remote router this peer stands for (it has no connection)
        self.progress = False  # it asked for Progress notices at its last registration
        self.ephemeral = ephemeral  # registered with ``ephemeral: true``: freed when idle past hold_until
        #: its binding is this router's to report (made or re-registered here, or restored), so freeing
        #: it is reported to ``store.unbind`` too; False for one only learned from the shared store
        self.owned = owned
        self.tasks = 0  # admitted tasks it is the requester of, not ended yet
        self.hold_until = 0.0  # ephemeral: kept at least until then (last left or last outcome + window_s)

    def binding(self) -> Binding:
        return Binding(self.peer_id, self.key_text, self.role, self.ephemeral)


class _Pending:
    """An admitted task. ``assignees`` lists every agent it was dispatched to (at most ``max_attempts``)."""

    __slots__ = ("assignees", "fingerprint", "frame", "method", "progress", "requester", "submitted_at", "task_id")

    def __init__(self, requester: str, task_id: str, method: str, frame: bytes, submitted_at: float, fingerprint: bytes, progress: bool | None = None) -> None:
        self.requester = requester
        self.progress = progress  # the task's own ``progress`` field; None: the requester's registration decides
        self.task_id = task_id
        self.method = method
        self.frame = frame
        self.submitted_at = submitted_at
        self.fingerprint = fingerprint
        self.assignees: list[str] = []


class _Outcome(msgspec.Struct, frozen=True, gc=False):
    """A finished task, kept for resubmissions: the outcome frame, what the task was, who ran it."""

    frame: bytes
    fingerprint: bytes
    assignees: tuple[str, ...]


def task_fingerprint(body: Task) -> bytes:
    """What makes two task frames with one id the same task: the method and the payload's exact bytes.

    SHA-256 of method, NUL, payload, hashed in place (no joined copy of the payload).
    """
    h = hashlib.sha256(body.method.encode())
    h.update(b"\0")
    h.update(body.payload)
    return h.digest()


def _signer(data: bytes) -> str | None:
    """The key a frame names (``None`` if it cannot be read): only to compare two frames of one task id."""
    try:
        return decode_frame(data).key
    except errors.ProtocolError:
        return None


def task_key(requester: str, task_id: str) -> str:
    """The router-wide key of a task: ids are unique per requester only."""
    return requester + "\n" + task_id


class RouterProtocol:
    """Connections, handshake, verification and task bookkeeping around a ``Router``."""

    def __init__(
        self,
        identity: Identity,
        router: Router,
        config: ProtocolConfig | None = None,
        nonce_source: Callable[[], str] | None = None,
    ) -> None:
        self.identity = identity
        self.router = router
        self.config = config or ProtocolConfig()
        self._nonce = nonce_source or (lambda: secrets.token_urlsafe(24))
        self._conns: dict[int, _Conn] = {}
        self._peers: dict[str, _Peer] = {}
        self._pending: dict[str, _Pending] = {}
        self._replay = ReplayCache(self.config.window_s, self.config.replay_cache_size)
        self._sources = SourceLimiter(self.config.connect_rate_per_s, self.config.connect_burst, self.config.max_sources)
        self._outcomes: OutcomeCache[_Outcome] = OutcomeCache(self.config.window_s, self.config.outcome_cache_size)
        self._msg_seq = 0
        self._msg_prefix = "r" + self._nonce()[:8] + "-"
        self.draining = False
        self.forwards: list[Forward] = []  # cluster mode: frames for other routers, until take_forwards()
        #: where lasting state changes are reported (``aicp.state``); None keeps them in memory only
        self.store: StateSink | None = None
        #: task key -> expiry: tasks admitted before a restart that had not ended (``restore``).
        #: Filled once, at most ``replay_cache_size``; emptied as they are resubmitted, or all at once when the last expires.
        self._interrupted: dict[str, float] = {}
        self._interrupted_until = 0.0
        #: (hold_until, peer id) of ephemeral peers that went idle: a heap, popped by ``on_timer``.
        #: One entry per time one went idle (entries of peers that came back are skipped when popped),
        #: so it holds at most (ephemeral departures and task ends within window_s) entries; O(log n) each.
        self._idle: list[tuple[float, str]] = []
        #: called as ``(method, outcome, seconds)`` when a task ends; outcome is "completed" or the
        #: error code. Drivers use it for latency histograms; it must not call back into the protocol.
        self.outcome_observer: Callable[[str, str, float], None] | None = None
        self.trace: trace.Sink | None = None  # set with record(): every admitted task, dispatch, result, outcome and agent event
        #: rejections by wire code, and other counters, for /metrics
        self.rejections: dict[str, int] = {}
        self.counters: dict[str, int] = {
            "frames_in": 0,
            "frames_binary": 0,
            "tasks_accepted": 0,
            "tasks_resubmitted": 0,
            "results_forwarded": 0,
            "results_late": 0,
            "results_duplicate": 0,
            "outcomes_completed": 0,
            "outcomes_failed": 0,
        }

    # ------------------------------------------------------------------ queries
    @property
    def connections(self) -> int:
        return len(self._conns)

    def peer_of(self, conn: int) -> str | None:
        c = self._conns.get(conn)
        return c.peer.peer_id if c is not None and c.peer is not None else None

    def role_of(self, conn: int) -> str | None:
        """The role registered on ``conn`` (``agent``, ``controller``, ``router``), None before registration. O(1)."""
        c = self._conns.get(conn)
        return c.peer.role if c is not None and c.peer is not None else None

    def connected_peers(self) -> dict[str, str]:
        """peer id -> role, for peers with a live connection."""
        return {p.peer_id: p.role for p in self._peers.values() if p.conn is not None}

    def touch_connected(self, now: float) -> int:
        """Report every connected peer (not ephemeral) to ``store.touch`` as seen at ``now``; how many. O(bound ids).

        A driver whose store expires bindings not seen for a while calls it every so often
        (``SqliteStore.touch_every_s``), so a peer connected since long ago is not taken for
        gone after a crash: its last touch is at most that long before it.
        """
        if self.store is None:
            return 0
        touched = 0
        for p in self._peers.values():
            if p.conn is not None and not p.ephemeral:
                self.store.touch(p.binding(), now)
                touched += 1
        return touched

    def conn_of(self, peer_id: str) -> int | None:
        """The connection a registered peer is on now, if any."""
        peer = self._peers.get(peer_id)
        return peer.conn.id if peer is not None and peer.conn is not None else None

    def pending_tasks(self) -> int:
        return len(self._pending)

    def agents_document(self) -> dict[str, object]:
        """The body of ``GET /agents`` (docs/PROTOCOL.md §11): every known agent with its bound key.

        O(agents): it is a monitoring snapshot, not a per-decision path.
        """
        agents = []
        for snap in self.router.registry.snapshot():
            peer = self._peers.get(str(snap["agent_id"]))
            snap["key"] = peer.key_text if peer is not None else None
            snap["connected"] = peer is not None and peer.conn is not None
            agents.append(snap)
        return {
            "protocol": PROTOCOL_VERSION,
            "router": self.config.router_id,
            "router_key": self.identity.public_key_text,
            "strategy": self.router.strategy.name,
            "agents": agents,
        }

    @property
    def bound_ids(self) -> int:
        """Peer ids bound now (ephemeral ones included until freed; cluster stand-ins too). O(1)."""
        return len(self._peers)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called: the router's next deadline, or freeing an idle ephemeral id. O(1) amortized."""
        deadline = self.router.next_deadline()
        if self._idle:
            until = self._idle[0][0]
            if deadline is None or until < deadline:
                return until
        return deadline

    # ------------------------------------------------------------------ cluster mode (aicp.cluster drives these)
    def take_forwards(self) -> list[Forward]:
        """Frames for other routers made since the last call (cluster mode; else always empty)."""
        out, self.forwards = self.forwards, []
        return out

    def add_remote(self, peer_id: str, router: str, role: Literal["agent", "router"]) -> None:
        """A peer without a connection that stands for router ``router``: as "agent", its capacity
        for one method (a remote candidate in the registry); as "router", the requester of the tasks
        it forwards here. ``peer_id`` must be a name no real peer can register."""
        if peer_id not in self._peers:
            self._peers[peer_id] = _Peer(peer_id, "", b"", role, router)

    def remote_lost(self, peer_id: str, now: float, reason: str) -> list[Output]:
        """A remote candidate is gone (its router silent or without agents): its tasks fail over."""
        return self._agent_lost(peer_id, now, reason)

    def submit_forwarded(self, origin: str, data: bytes, timeout_s: float, now: float, key: str = "", method: str = "",
                         fingerprint: bytes = b"") -> list[Output]:
        """A task frame another router owns, to run here on a local agent, in one attempt.

        ``origin`` is the peer added with ``add_remote(..., "router")``. The frame is not verified
        again (its owner did; routers of a cluster trust each other). Its one outcome comes out as a
        ``Forward`` of kind "outcome" to the origin's router.

        ``key``, ``method`` and ``fingerprint`` are what the owner read from the frame (its
        ``Forward``): given, the frame is not decoded here at all; missing, it is.
        """
        requester = self._peers[origin]
        assert requester.router is not None
        body: Task | None = None
        _, sep, task_id = key.partition("\n")
        if not (sep and task_id and method and len(fingerprint) == 32):
            try:
                decoded = decode_body(decode_frame(data).body)
            except errors.ProtocolError as exc:
                self._count(exc.code)
                return []
            if not isinstance(decoded, Task):
                self._count(errors.INVALID_MESSAGE)
                return []
            body = decoded
            key, task_id, method, fingerprint = task_key(body.sender, body.id), body.id, body.method, task_fingerprint(body)
        pending = self._pending.get(key)
        if pending is not None:
            # The same task again: its controller moved and re-sent it through another owner.
            # The latest owner gets the one outcome (the earlier one has lost that controller).
            self.counters["tasks_resubmitted"] += 1
            if pending.requester != origin and pending.fingerprint == fingerprint and _signer(pending.frame) == _signer(data):
                self._retarget(pending, origin, now)
            return []
        stored = self._outcomes.get(key, now)
        if stored is not None:
            self.counters["tasks_resubmitted"] += 1
            if stored.fingerprint == fingerprint:
                self.forwards.append(Forward(requester.router, "outcome", key, stored.frame))
            else:
                frame_out = self._error_frame(now, errors.ID_CONFLICT, f"task id {task_id!r} ended with another method or payload", task_id, task_id, method)
                self.forwards.append(Forward(requester.router, "outcome", key, frame_out))
            return []
        # The task's own progress field matters only to a requester with a connection, never the owner router here.
        self._pending[key] = _Pending(origin, task_id, method, data, now, fingerprint, body.progress if body is not None else None)
        requester.tasks += 1
        if self.trace is not None:
            if body is None:
                with contextlib.suppress(errors.ProtocolError):
                    decoded = decode_body(decode_frame(data).body)
                    body = decoded if isinstance(decoded, Task) else None
            self.trace(trace.Arrive(t=now, task=key, method=method, bytes=len(body.payload) if body is not None else 0, timeout_ms=timeout_s * 1000.0))
        self.counters["tasks_accepted"] += 1
        return self._apply(self.router.submit(key, method, now, timeout_s, local_only=True, max_attempts=1), now)

    def remote_outcome(self, router: str, key: str, data: bytes, now: float, ok: bool = False) -> list[Output]:
        """Router ``router`` sends the outcome of task ``key`` it ran for us: a result frame, or its error frame.

        A success completes the task (the result frame goes to the requester verbatim); an
        error or a result that does not match is a failed attempt, retried as any other.
        An outcome for an attempt this router has already given up on is late and dropped.
        ``ok``: ``router`` says ``data`` is the verified, successful result of this task (its
        ``Forward.ok``); it is taken as such, without decoding it again.
        """
        agent = self.router.assigned_agent(key)
        peer = self._peers.get(agent) if agent is not None else None
        pending = self._pending.get(key)
        if peer is None or peer.router != router or pending is None:
            self.counters["results_late"] += 1
            return []
        if ok:
            if self.trace is not None:
                with contextlib.suppress(errors.ProtocolError):
                    result = decode_body(decode_frame(data).body)
                    if isinstance(result, Result):
                        self.trace(trace.Reply(t=now, task=key, agent=peer.peer_id, ok=True, service_ms=result.service_ms))
            return self._remote_verdict(peer.peer_id, key, True, "", now, data)
        reason = ""
        try:
            body = decode_body(decode_frame(data).body)
        except errors.ProtocolError as exc:
            body, reason = None, f"router {router} sent an unreadable outcome: {exc.code}"
        if isinstance(body, Result):
            if task_key(body.requester, body.task_id) != key or body.method != pending.method:
                reason = f"router {router} sent a result for another task"
            else:
                ok, reason = body.ok, body.reason
                if self.trace is not None:
                    self.trace(trace.Reply(t=now, task=key, agent=peer.peer_id, ok=body.ok, service_ms=body.service_ms))
        elif isinstance(body, Error):
            reason = f"router {router}: {body.code}: {body.message}"
        elif body is not None:
            reason = f"router {router} sent a {type(body).__name__} as an outcome"
        return self._remote_verdict(peer.peer_id, key, ok, reason, now, data)

    def _remote_verdict(self, agent_id: str, key: str, ok: bool, reason: str, now: float, data: bytes) -> list[Output]:
        verdict, actions = self.router.result(agent_id, key, ok, now, reason)
        if verdict != ACCEPTED:
            self.counters["results_late"] += 1
            return []
        return self._apply(actions, now, result_frame=data if ok else None)

    # ------------------------------------------------------------------ lasting state
    def restore(self, snapshot: Snapshot, now: float) -> None:
        """Take back the lasting state of an earlier run, before the first connection.

        Bindings are restored up to ``max_peers`` (an ephemeral one is held as if its peer left
        now, or until its last stored seen id or outcome expires if later); seen ids and outcomes that have not
        expired up to their caches' sizes, the longest-lived ones if not all fit. A task the earlier run admitted
        that has no outcome was interrupted by the restart: a resubmission of it gets
        ``shutting-down`` (as on a graceful stop) rather than running a second time.
        O(entries log entries). Raises ``LocalError`` on a binding whose key is not valid.
        """
        if self._conns or self._pending:
            raise errors.LocalError("restore before the first connection")
        for b in snapshot.bindings:
            if b.role not in ("agent", "controller"):
                raise errors.LocalError(f"stored binding of {b.peer_id!r} has an unknown role {b.role!r}")
            try:
                key_raw = decode_public_key(b.key)
            except errors.ProtocolError as exc:
                raise errors.LocalError(f"stored binding of {b.peer_id!r} has an invalid key: {exc}") from exc
            if b.peer_id not in self._peers and len(self._peers) < self.config.max_peers:
                if b.ephemeral and b.role != "controller":
                    raise errors.LocalError(f"stored binding of {b.peer_id!r} is ephemeral but not a controller's")
                peer = self._peers[b.peer_id] = _Peer(b.peer_id, b.key, key_raw, b.role, ephemeral=b.ephemeral)
                # A restart counts as its peer leaving now; held longer if a stored record of it lasts longer.
                peer.hold_until = now + self.config.window_s
        held = {p.peer_id: p for p in self._peers.values() if p.ephemeral}
        if held:
            for s in snapshot.seen:
                p = held.get(s.sender)
                if p is not None and s.expiry > p.hold_until:
                    p.hold_until = s.expiry
            for o in snapshot.outcomes:
                p = held.get(o.key.split("\n", 1)[0])
                if p is not None and o.expiry > p.hold_until:
                    p.hold_until = o.expiry
            for p in held.values():
                heapq.heappush(self._idle, (p.hold_until, p.peer_id))
        for o in sorted(snapshot.outcomes, key=lambda o: o.expiry):
            self._outcomes.restore(o.key, _Outcome(o.frame, o.fingerprint, o.assignees), o.expiry, now)
        # If the cache is now smaller than the earlier run's, keep the ids that must be remembered longest.
        seen = sorted((s for s in snapshot.seen if s.expiry > now), key=lambda s: s.expiry)[-self.config.replay_cache_size :]
        for s in seen:
            if self._replay.restore((s.sender, s.msg_id), s.expiry, now) and s.task:
                key = task_key(s.sender, s.msg_id)
                if self._outcomes.get(key, now) is None:
                    self._interrupted[key] = s.expiry
                    self._interrupted_until = max(self._interrupted_until, s.expiry)

    def learn_binding(self, binding: Binding, now: float) -> list[Output]:
        """A binding that another router stored in the state the cluster shares (``aicp.live.store_jetstream``).

        The shared store holds one binding per id, the first one written: it wins.
        A learned ephemeral binding is held here ``window_s`` from each time it is learned
        (longer while its peer is connected here), then freed here without ``unbind``:
        the router that made it removes it from the shared store.
        An unknown id is bound here too (not reported to ``store``: it is stored
        already); the same key changes nothing. Another key means this router bound
        the id to a different key in the moment before it learned the other router's
        binding: the local binding is replaced, and the peer holding it, if connected,
        is closed with ``key-mismatch`` as if it had registered after. O(1).
        Raises ``LocalError`` on a binding whose role or key is not valid.
        """
        if binding.role not in ("agent", "controller"):
            raise errors.LocalError(f"shared binding of {binding.peer_id!r} has an unknown role {binding.role!r}")
        try:
            key_raw = decode_public_key(binding.key)
        except errors.ProtocolError as exc:
            raise errors.LocalError(f"shared binding of {binding.peer_id!r} has an invalid key: {exc}") from exc
        if binding.ephemeral and binding.role != "controller":
            raise errors.LocalError(f"shared binding of {binding.peer_id!r} is ephemeral but not a controller's")
        peer = self._peers.get(binding.peer_id)
        if peer is not None and peer.key_text == binding.key:
            if peer.ephemeral:  # it is held somewhere: hold it here a window longer too
                self._hold(peer, now)
            return []
        if peer is None and len(self._peers) >= self.config.max_peers:
            return []
        new = self._peers[binding.peer_id] = _Peer(binding.peer_id, binding.key, key_raw, binding.role, ephemeral=binding.ephemeral, owned=False)
        if peer is None:
            if new.ephemeral:
                self._hold(new, now)
            return []
        new.tasks = peer.tasks  # its pending tasks stay counted (their outcomes go to the id's holder, as before)
        if new.ephemeral:
            self._hold(new, now)
        self._count(errors.KEY_MISMATCH)
        if peer.conn is None:
            return []
        old = peer.conn
        peer.conn = None
        old.peer = None
        old.closed = True
        out: list[Output] = [Close(old.id, CLOSE_POLICY, errors.KEY_MISMATCH)]
        if peer.role == "agent":
            out.extend(self._agent_lost(peer.peer_id, now, f"id bound to another key at another router ({errors.KEY_MISMATCH})"))
        return out

    def binding_dropped(self, peer_id: str, now: float) -> None:
        """The shared store no longer holds ``peer_id``'s binding: another router freed its ephemeral copy.

        If this router still holds the id as its own (its peer registered here, and it is not
        freed here yet), the binding is reported to ``store.bind`` again, so the shared store
        keeps it while any router holds it. O(1).
        """
        peer = self._peers.get(peer_id)
        if peer is not None and peer.ephemeral and peer.owned and self.store is not None:
            self.store.bind(peer.binding())

    def record(self, sink: trace.Sink | None, now: float) -> None:
        """Hand every trace event (``aicp.trace``) to ``sink`` from now on; ``None`` stops.

        The trace starts with a header and one ``agent-up`` per agent already registered,
        so a trace begun on a running router is complete from its first line.
        """
        self.trace = sink
        self.router.trace = sink
        if sink is None:
            return
        r = self.router
        sink(trace.Header(t=now, v=trace.TRACE_VERSION, router=self.config.router_id, strategy=r.strategy.name,
                          config={"lease_s": r.config.lease_s, "heartbeat_s": r.config.heartbeat_s, "attempt_timeout_s": r.config.attempt_timeout_s,
                                  "verify": self.config.verify}))
        for state in r.registry.agents.values():
            if state.status.value != "dead":
                sink(trace.AgentUp(t=now, agent=state.agent_id, capabilities=list(state.capabilities), concurrency=state.concurrency))

    # ------------------------------------------------------------------ events
    def admit(self, source: str, now: float) -> bool:
        """May ``source`` (an address) open another connection now? A refusal counts as `rate-limited`.

        Drivers call this before accepting a transport, so a flood from one address is
        refused before it costs a handshake, a challenge or a signature check.
        """
        if self._sources.admit(source, now):
            return True
        self._count(errors.RATE_LIMITED)
        return False

    def connection_made(self, conn: int, now: float) -> list[Output]:
        """A transport connected: remember it and challenge it."""
        nonce = self._nonce()
        self._conns[conn] = _Conn(conn, nonce, now, self.config.rate_burst)
        cfg, rcfg = self.config, self.router.config
        body = Challenge(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            sender=cfg.router_id,
            ts=now,
            nonce=nonce,
            heartbeat_s=rcfg.heartbeat_s,
            lease_s=rcfg.lease_s,
            window_s=cfg.window_s,
        )
        return [Send(conn, seal(self.identity, cfg.router_id, body))]

    def connection_lost(self, conn: int, now: float) -> list[Output]:
        c = self._conns.pop(conn, None)
        if c is None or c.peer is None:
            return []
        c.closed = True
        peer = c.peer
        if peer.conn is not c:
            return []
        peer.conn = None
        if peer.role != "agent":
            if peer.ephemeral:
                self._hold(peer, now)
            return []
        return self._agent_lost(peer.peer_id, now, "disconnected")

    def on_timer(self, now: float) -> list[Output]:
        idle = self._idle
        while idle and idle[0][0] <= now:
            _, peer_id = heapq.heappop(idle)
            peer = self._peers.get(peer_id)
            if peer is None or not peer.ephemeral or peer.conn is not None or peer.tasks:
                continue  # freed already, back, or still waiting for an outcome (pushed again when it ends)
            if peer.hold_until > now:
                heapq.heappush(idle, (peer.hold_until, peer_id))  # held longer since this entry was pushed
                continue
            del self._peers[peer_id]
            if peer.owned and self.store is not None:
                self.store.unbind(peer.binding())
        return self._apply(self.router.on_timer(now), now)

    def _hold(self, peer: _Peer, now: float) -> None:
        """An ephemeral peer left, or one of its tasks ended, or it was learned: keep it ``window_s`` from now. O(log n)."""
        until = now + self.config.window_s
        if until > peer.hold_until:
            peer.hold_until = until
        if peer.conn is None and not peer.tasks:
            heapq.heappush(self._idle, (peer.hold_until, peer.peer_id))

    def begin_drain(self, now: float, drain_s: float, reason: str = "router shutting down") -> list[Output]:
        """Refuse new tasks from now on and tell every peer to finish within ``drain_s``."""
        self.draining = True
        out: list[Output] = []
        for c in self._conns.values():
            if c.peer is not None:
                body = Goaway(v=PROTOCOL_VERSION, id=self._next_id(), sender=self.config.router_id, ts=now, drain_s=drain_s, reason=reason)
                out.append(Send(c.id, seal(self.identity, self.config.router_id, body)))
        return out

    def shutdown(self, now: float) -> list[Output]:
        """End every task still pending with ``shutting-down`` and close every connection."""
        out = self._apply(self.router.cancel_all(errors.SHUTTING_DOWN, "router stopped before the task finished"), now)
        for c in list(self._conns.values()):
            out.append(Close(c.id, CLOSE_GOING_AWAY, "router shutting down"))
        return out

    def prepare_verify(self, conn: int, data: bytes | str) -> Verification | None:
        """The signature check ``frame_received`` would make for this frame, to run elsewhere first.

        Changes nothing. For a registered peer under ``every-hop`` it decodes the envelope and,
        if it names the peer's own key, returns a ``Verification`` of it. The driver runs it
        (on a thread, say), then calls ``frame_received(conn, v.data, now, v)`` in the connection's
        order. ``None``: nothing to prepare; ``frame_received`` checks everything itself. Either
        way the checks, their order and the verdicts are those of ``frame_received`` alone.
        """
        c = self._conns.get(conn)
        if c is None or c.closed or c.peer is None or self.config.verify != "every-hop":
            return None
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        peer = c.peer
        if len(data) > self.config.max_frame_bytes:
            return None
        try:
            frame = decode_frame(data)
            if frame.key != peer.key_text:
                return None
            return Verification(conn, data, frame, peer.key_text, peer.key_raw, decode_signature(frame.sig))
        except errors.ProtocolError:
            return None

    def frame_received(self, conn: int, data: bytes | str, now: float, verified: Verification | None = None, binary: bool = False) -> list[Output]:
        """One complete frame from ``conn``. Never raises for anything the peer sent.

        ``verified``: this frame's ``Verification`` from ``prepare_verify``, already run. It stands
        in for decoding the envelope and checking the signature; a check not yet run is made here.

        ``binary``: the driver received a WebSocket binary frame. AICP frames are text, so it
        closes the connection with 1003, without an error frame (PROTOCOL.md §1).
        """
        c = self._conns.get(conn)
        if c is None or c.closed:
            return []
        self.counters["frames_in"] += 1
        if binary:
            self.counters["frames_binary"] += 1
            c.closed = True
            return [Close(conn, CLOSE_UNSUPPORTED_DATA, "AICP frames are text frames")]
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")  # lone surrogates then fail as malformed
        if len(data) > (self.config.max_frame_bytes if c.peer is not None else min(self.config.max_frame_bytes, self.config.max_handshake_bytes)):
            self._count(errors.TOO_LARGE)
            return [Close(conn, CLOSE_TOO_BIG, "frame too large")]
        frame: Frame | None = None
        try:
            if not self._take_token(c, now):
                raise errors.ProtocolError(errors.RATE_LIMITED, "message rate over the limit")
            frame = verified.frame if verified is not None and verified.data is data else decode_frame(data)
            if c.peer is None:
                return self._handle_unregistered(c, frame, now)
            return self._handle_registered(c, c.peer, frame, data, now, verified)
        except errors.ProtocolError as exc:
            # Name the refused message, so a refused task ends at its sender at once rather than
            # at a local timeout. When the frame failed before or at verification these fields are
            # read from its unverified body: hints, echoed only to this same connection (§8).
            refused = self._peek(frame, data)
            out: list[Output] = [self._reject(c, exc.code, exc.message, now, refused)]
            if c.peer is None:  # a failed handshake ends the connection
                c.closed = True
                out.append(Close(conn, CLOSE_POLICY, exc.code))
            return out

    @staticmethod
    def _peek(frame: Frame | None, data: bytes) -> AnyBody | None:
        """Best-effort, unverified look at a refused frame's body: only to address the error."""
        try:
            return decode_body((frame or decode_frame(data)).body)
        except errors.ProtocolError:
            return None

    # ------------------------------------------------------------------ handshake
    def _handle_unregistered(self, c: _Conn, frame: Frame, now: float) -> list[Output]:
        key_raw = decode_public_key(frame.key)
        check_public_key(key_raw)  # before verifying: a small-order key "verifies" forged bodies
        sig = decode_signature(frame.sig)
        verify(key_raw, frame.body, sig)
        body = decode_body(frame.body)
        if not isinstance(body, Register):
            raise errors.VerifyError(errors.AUTH_REQUIRED, "register first")
        if body.sender != frame.sender or body.key != frame.key:
            raise errors.VerifyError(errors.KEY_MISMATCH, "body sender/key differ from the envelope's")
        if body.sender == self.config.router_id:
            raise errors.VerifyError(errors.KEY_MISMATCH, f"id {body.sender!r} is the router's own, bound to the router's key")
        if c.nonce is None or not secrets.compare_digest(body.nonce, c.nonce):
            raise errors.VerifyError(errors.BAD_NONCE, "registration must sign this connection's challenge nonce")
        c.nonce = None  # single use
        cfg = self.config
        if cfg.allowlist is not None and frame.key not in cfg.allowlist:
            raise errors.VerifyError(errors.NOT_ALLOWED, "public key is not on the allowlist")
        self._check_fresh(body, now)
        peer = self._peers.get(body.sender)
        if peer is not None and peer.key_text != frame.key:
            raise errors.VerifyError(errors.KEY_MISMATCH, f"id {body.sender!r} is bound to another key")
        if body.role == "controller" and body.capabilities:
            raise errors.DecodeError(errors.INVALID_MESSAGE, "a controller registers no capabilities")
        if body.ephemeral and body.role != "controller":
            raise errors.DecodeError(errors.INVALID_MESSAGE, "only a controller registers an ephemeral id")
        if peer is not None and peer.role != body.role:
            raise errors.DecodeError(errors.INVALID_MESSAGE, f"id {body.sender!r} registered before as {peer.role}")
        if peer is None and len(self._peers) >= cfg.max_peers:
            raise errors.VerifyError(errors.OVERLOADED, "too many peer ids")
        self._check_new(body)
        self._remember(body, now)  # the last check (overloaded if the id cache is full): nothing changed before it
        if peer is None:
            peer = self._peers[body.sender] = _Peer(body.sender, frame.key, key_raw, body.role, ephemeral=body.ephemeral)
            if self.store is not None:
                self.store.bind(peer.binding())
        else:
            peer.owned = True  # registered here: this router frees it from the shared store too
            if self.store is not None and not peer.ephemeral:
                self.store.touch(peer.binding(), now)
        out: list[Output] = []
        old = peer.conn
        if old is not None and old is not c:
            # The same key connected again: the new connection wins, the old one is closed.
            old.peer = None
            old.closed = True
            out.append(Close(old.id, CLOSE_REPLACED, "replaced by a newer connection"))
            if peer.role == "agent":
                out.extend(self._agent_lost(peer.peer_id, now, "replaced by a newer connection"))
        peer.conn = c
        peer.progress = body.progress
        c.peer = peer
        if body.role == "agent":
            self.router.register_agent(body.sender, body.capabilities, now, concurrency=body.concurrency)
            if self.trace is not None:
                self.trace(trace.AgentUp(t=now, agent=body.sender, capabilities=list(body.capabilities), concurrency=body.concurrency))
        rcfg = self.router.config
        ack = RegisterAck(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            sender=cfg.router_id,
            ts=now,
            ref=body.id,
            peer=body.sender,
            role=body.role,
            heartbeat_s=rcfg.heartbeat_s,
            lease_s=rcfg.lease_s,
        )
        out.append(Send(c.id, seal(self.identity, cfg.router_id, ack)))
        return out

    # ------------------------------------------------------------------ registered peers
    def _handle_registered(self, c: _Conn, peer: _Peer, frame: Frame, data: bytes, now: float, verified: Verification | None = None) -> list[Output]:
        if frame.sender != peer.peer_id or frame.key != peer.key_text:
            raise errors.VerifyError(errors.KEY_MISMATCH, "frame sender/key are not this connection's")
        if self.config.verify == "every-hop":
            if verified is not None and verified.done and verified.frame is frame and verified.key_raw == peer.key_raw:
                if verified.error is not None:
                    raise verified.error
            else:
                verify(peer.key_raw, frame.body, decode_signature(frame.sig))
        body = decode_body(frame.body)
        if body.sender != peer.peer_id:
            raise errors.VerifyError(errors.KEY_MISMATCH, "body sender is not this connection's peer")
        self._check_fresh(body, now)
        if peer.role == "agent" and (peer.peer_id, body.id) not in self._replay:
            # Any new frame the agent signed just now proves it alive, whatever the router then
            # makes of it (PROTOCOL.md §6): a busy agent whose results flow needs no heartbeats.
            self.router.renew_lease(peer.peer_id, now)
        if isinstance(body, Task):
            return self._on_task(c, peer, body, data, now)
        if isinstance(body, Result):
            return self._on_result(c, peer, body, data, now)
        if not isinstance(body, (Heartbeat, Deregister, Register)):
            raise errors.DecodeError(errors.INVALID_MESSAGE, f"peers do not send {body.__struct_config__.tag} messages")
        self._check_new(body)
        if isinstance(body, Register):  # the nonce was used up by this connection's registration
            raise errors.VerifyError(errors.BAD_NONCE, "already registered on this connection; register again on a new connection")
        self._remember(body, now)
        if isinstance(body, Heartbeat):
            if peer.role == "agent":
                self.router.heartbeat(peer.peer_id, now, body.load)
            return []
        out: list[Output] = []  # a deregister
        peer.conn = None
        c.peer = None
        c.closed = True
        if peer.role == "agent":
            out.extend(self._agent_lost(peer.peer_id, now, "deregistered"))
        elif peer.ephemeral:
            self._hold(peer, now)
        out.append(Close(c.id, CLOSE_NORMAL, "deregistered"))
        return out

    def _on_task(self, c: _Conn, peer: _Peer, body: Task, data: bytes, now: float) -> list[Output]:
        key = task_key(peer.peer_id, body.id)
        fingerprint = task_fingerprint(body)
        pending = self._pending.get(key)
        if pending is not None:  # resubmitted while running: it will get the one outcome
            if pending.fingerprint != fingerprint:
                raise errors.VerifyError(errors.ID_CONFLICT, f"task id {body.id!r} is running with another method or payload")
            self.counters["tasks_resubmitted"] += 1
            self._retarget(pending, peer.peer_id, now)  # cluster mode: it may have come here from another router first
            return []
        stored = self._outcomes.get(key, now)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise errors.VerifyError(errors.ID_CONFLICT, f"task id {body.id!r} ended with another method or payload")
            self.counters["tasks_resubmitted"] += 1
            return [Send(c.id, stored.frame)]
        if self._interrupted:
            if now >= self._interrupted_until:
                self._interrupted.clear()
            interrupted_until = self._interrupted.pop(key, None)
            if interrupted_until is not None and interrupted_until > now:
                return self._interrupted_outcome(c, body, key, now)
        self._check_new(body)
        # Refusals before admission leave no trace: the id stays free for a later submission (§6).
        if self.draining:
            raise errors.VerifyError(errors.SHUTTING_DOWN, "router is draining")
        if self.router.tasks_in_flight >= self.router.config.max_tasks:
            raise errors.VerifyError(errors.OVERLOADED, "router is at max_tasks")
        self._remember(body, now)
        self._pending[key] = _Pending(peer.peer_id, body.id, body.method, data, now, fingerprint, body.progress)
        peer.tasks += 1
        if self.trace is not None:
            self.trace(trace.Arrive(t=now, task=key, method=body.method, bytes=len(body.payload), timeout_ms=body.timeout_ms))
        self.counters["tasks_accepted"] += 1
        timeout_s = body.timeout_ms / 1000.0 if body.timeout_ms is not None else None
        return self._apply(self.router.submit(key, body.method, now, timeout_s), now)

    def _interrupted_outcome(self, c: _Conn, body: Task, key: str, now: float) -> list[Output]:
        """A task admitted before a restart, without an outcome: it ends now, as on a graceful stop."""
        self.counters["tasks_resubmitted"] += 1
        self.counters["outcomes_failed"] += 1
        frame = self._error_frame(now, errors.SHUTTING_DOWN, "router restarted before the task finished", body.id, body.id, body.method)
        self._keep_outcome(key, _Outcome(frame, task_fingerprint(body), ()), now)
        return [Send(c.id, frame)]

    def _on_result(self, c: _Conn, peer: _Peer, body: Result, data: bytes, now: float) -> list[Output]:
        if peer.role != "agent":
            raise errors.DecodeError(errors.INVALID_MESSAGE, "only agents send results")
        key = task_key(body.requester, body.task_id)
        if (peer.peer_id, body.id) in self._replay:
            self.counters["results_duplicate"] += 1  # a re-sent result we already have: deduplicated
            return []
        pending = self._pending.get(key)
        if pending is None:
            # Not running (any more). Dropped as late only from an agent it was dispatched to,
            # while the router remembers the ended task; otherwise the sender is told.
            stored = self._outcomes.get(key, now)
            if stored is None or peer.peer_id not in stored.assignees:
                raise errors.VerifyError(errors.NOT_ASSIGNED, "no task of yours has this task_id and requester")
            self._remember(body, now)
            if self.trace is not None:
                self.trace(trace.Reply(t=now, task=key, agent=peer.peer_id, ok=body.ok, service_ms=body.service_ms))
            self.router.result(peer.peer_id, key, body.ok, now, body.reason)  # counted as late there
            self.counters["results_late"] += 1
            return []
        if peer.peer_id not in pending.assignees:
            raise errors.VerifyError(errors.NOT_ASSIGNED, "this task was not dispatched to you")
        if pending.method != body.method:
            raise errors.DecodeError(errors.INVALID_MESSAGE, "result method differs from the task's")
        self._remember(body, now)
        if self.trace is not None:
            self.trace(trace.Reply(t=now, task=key, agent=peer.peer_id, ok=body.ok, service_ms=body.service_ms))
        verdict, actions = self.router.result(peer.peer_id, key, body.ok, now, body.reason)
        if verdict == NOT_ASSIGNED:  # cannot happen: assignees mirrors the router's dispatches
            raise errors.VerifyError(errors.NOT_ASSIGNED, "this task was not dispatched to you")
        if verdict != ACCEPTED:
            self.counters["results_late"] += 1
            return []
        return self._apply(actions, now, result_frame=data)

    # ------------------------------------------------------------------ router actions
    def _apply(self, actions: list[Action], now: float, result_frame: bytes | None = None) -> list[Output]:
        out: list[Output] = []
        for action in actions:
            if self.trace is not None:
                self._trace_action(action, now)
            if isinstance(action, Dispatch):
                pending = self._pending[action.task_id]
                if action.agent_id not in pending.assignees:
                    pending.assignees.append(action.agent_id)
                agent = self._peers[action.agent_id]
                if agent.conn is not None:
                    out.append(Send(agent.conn.id, pending.frame))
                elif agent.router is not None:
                    limit = self.router.attempt_deadline(action.task_id, now)
                    self.forwards.append(Forward(agent.router, "task", action.task_id, pending.frame, max(0.001, (limit or now) - now),
                                                 pending.method, pending.fingerprint))
                requester = self._peers.get(pending.requester)
                if requester is not None and requester.conn is not None and (requester.progress if pending.progress is None else pending.progress):
                    out.append(Send(requester.conn.id, self._progress_frame(now, pending, action)))
            elif isinstance(action, Completed):
                pending = self._pending.pop(action.task_id)
                assert result_frame is not None
                self.counters["results_forwarded"] += 1
                self.counters["outcomes_completed"] += 1
                if self.outcome_observer is not None:
                    self.outcome_observer(pending.method, "completed", now - pending.submitted_at)
                out.extend(self._deliver(pending, action.task_id, result_frame, now, ok=True))
            elif isinstance(action, Failed):
                pending = self._pending.pop(action.task_id)
                self.counters["outcomes_failed"] += 1
                if self.outcome_observer is not None:
                    self.outcome_observer(pending.method, action.code, now - pending.submitted_at)
                frame = self._error_frame(now, action.code, action.message, pending.task_id, pending.task_id, pending.method)
                out.extend(self._deliver(pending, action.task_id, frame, now))
            elif isinstance(action, AgentDown):
                down = self._peers.get(action.agent_id)
                if down is not None and down.conn is not None:
                    conn = down.conn
                    down.conn = None
                    conn.peer = None
                    conn.closed = True
                    out.append(Close(conn.id, CLOSE_LEASE_EXPIRED, action.reason))
        return out

    def _trace_action(self, action: Action, now: float) -> None:
        assert self.trace is not None
        if isinstance(action, Dispatch):
            self.trace(trace.Dispatch(t=now, task=action.task_id, agent=action.agent_id, attempt=action.attempt))
        elif isinstance(action, Completed):
            self.trace(trace.End(t=now, task=action.task_id, outcome="completed", attempts=action.attempts, agent=action.agent_id))
        elif isinstance(action, Failed):
            self.trace(trace.End(t=now, task=action.task_id, outcome=action.code, attempts=action.attempts))
        elif isinstance(action, AgentDown):
            self.trace(trace.AgentDown(t=now, agent=action.agent_id, reason=action.reason))

    def _agent_lost(self, agent_id: str, now: float, reason: str) -> list[Output]:
        if self.trace is not None:
            self.trace(trace.AgentDown(t=now, agent=agent_id, reason=reason))
        return self._apply(self.router.agent_lost(agent_id, now, reason), now)

    def _keep_outcome(self, key: str, outcome: _Outcome, now: float) -> None:
        expiry = self._outcomes.put(key, outcome, now)
        if self.store is not None:
            self.store.outcome(StoredOutcome(key, outcome.frame, expiry, outcome.fingerprint, outcome.assignees))

    def _retarget(self, pending: _Pending, requester: str, now: float) -> None:
        """A pending task's outcome goes to ``requester`` from now on; each requester's ``tasks`` follows."""
        if pending.requester == requester:
            return
        old = self._peers.get(pending.requester)
        if old is not None:
            old.tasks -= 1
            if old.ephemeral:
                self._hold(old, now)
        new = self._peers.get(requester)
        if new is not None:
            new.tasks += 1
        pending.requester = requester

    def _deliver(self, pending: _Pending, key: str, frame: bytes, now: float, ok: bool = False) -> list[Output]:
        """``ok``: ``frame`` is the verified, successful result of this task (a ``Completed``)."""
        self._keep_outcome(key, _Outcome(frame, pending.fingerprint, tuple(pending.assignees)), now)
        requester = self._peers.get(pending.requester)
        if requester is not None:
            requester.tasks -= 1
            if requester.ephemeral:  # its outcome is kept window_s: so is its binding
                self._hold(requester, now)
        if requester is not None and requester.router is not None:
            self.forwards.append(Forward(requester.router, "outcome", key, frame, ok=ok))
            return []
        if requester is None or requester.conn is None:
            return []  # kept in the outcome cache for a resubmission
        return [Send(requester.conn.id, frame)]

    # ------------------------------------------------------------------ helpers
    def _check_fresh(self, body: AnyBody, now: float) -> None:
        if not self._replay.is_fresh(body.ts, now):
            raise errors.VerifyError(errors.STALE, f"timestamp {body.ts:.3f} is outside ±{self.config.window_s:g} s of {now:.3f}")

    def _check_new(self, body: AnyBody) -> None:
        if (body.sender, body.id) in self._replay:
            raise errors.VerifyError(errors.DUPLICATE, f"message id {body.id!r} was seen before")

    def _remember(self, body: AnyBody, now: float) -> None:
        key = (body.sender, body.id)
        if not self._replay.add(key, body.ts, now):
            if key in self._replay:
                raise errors.VerifyError(errors.DUPLICATE, f"message id {body.id!r} was seen before")
            raise errors.VerifyError(errors.OVERLOADED, "replay cache is full")
        if self.store is not None and not isinstance(body, (Result, Register)):  # see aicp.state: these need no lasting record
            expiry = self._replay.expiry(key)
            assert expiry is not None
            self.store.seen(Seen(body.sender, body.id, expiry, isinstance(body, Task)))

    def _take_token(self, c: _Conn, now: float) -> bool:
        return c.bucket.take(now, self.config.rate_per_s, self.config.rate_burst)

    def _count(self, code: str) -> None:
        self.rejections[code] = self.rejections.get(code, 0) + 1

    def _reject(self, c: _Conn, code: str, message: str, now: float, refused: AnyBody | None = None) -> Send:
        """An error frame for a refused message; for a refused task it carries ``task_id`` and ``method``."""
        self._count(code)
        task = refused if isinstance(refused, Task) else None
        ref = refused.id if refused is not None else None
        return Send(c.id, self._error_frame(now, code, message, ref, task.id if task else None, task.method if task else None))

    def _progress_name(self, agent_id: str) -> str:
        """Cluster mode: a remote candidate's id is no valid peer id; a progress notice names its router instead."""
        peer = self._peers.get(agent_id)
        return "router:" + peer.router if peer is not None and peer.router is not None and peer.role == "agent" else agent_id

    def _progress_frame(self, now: float, pending: _Pending, dispatch: Dispatch) -> bytes:
        body = Progress(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            sender=self.config.router_id,
            ts=now,
            task_id=pending.task_id,
            method=pending.method,
            state="dispatched" if dispatch.attempt <= 1 else "retried",
            agent=self._progress_name(dispatch.agent_id),
            attempt=dispatch.attempt,
        )
        return seal(self.identity, self.config.router_id, body)

    def _error_frame(self, now: float, code: str, message: str, ref: str | None, task_id: str | None, method: str | None) -> bytes:
        """A router-signed error; with ``task_id`` set it is that task's one outcome."""
        body = Error(
            v=PROTOCOL_VERSION,
            id=self._next_id(),
            sender=self.config.router_id,
            ts=now,
            code=code,
            message=message[:4096],
            ref=ref,
            task_id=task_id,
            method=method,
        )
        return seal(self.identity, self.config.router_id, body)

    def _next_id(self) -> str:
        self._msg_seq += 1
        return self._msg_prefix + str(self._msg_seq)
