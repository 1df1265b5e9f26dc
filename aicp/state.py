"""The router state that may outlive its process, as plain data, sans I/O.

Three things make a restarted router keep its word (docs/SECURITY.md, "What survives
a router restart"):

* **bindings**: peer id -> public key and role, bound on first use. A chosen id is bound
  for the life of the router process, and in its store for good unless the store expires
  bindings not seen for a while (``touch``; ``aicp serve --binding-ttl``); an ephemeral one (a controller that registered with ``ephemeral: true``)
  is freed ``window_s`` after its peer left and its last task ended, and reported
  to the sink with ``unbind`` then;
* **seen ids**: ``(sender, message id)`` until the moment a copy can no longer be fresh,
  so a frame captured before the restart is still a ``duplicate`` after it. Only tasks,
  heartbeats and deregistrations are kept: a registration cannot be replayed anyway
  (it signs its connection's nonce), and a result replayed after a restart finds no
  running task and is dropped as late, so it cannot change anything. That leaves two
  records per task (its id and its outcome) instead of three;
* **outcomes**: each ended task's one outcome frame (the exact signed bytes), kept for
  resubmissions until it expires.

The core never touches a file. ``RouterProtocol`` calls a ``StateSink`` with one small
record per change, in the order the changes happen, and takes a ``Snapshot`` back at
start (``RouterProtocol.restore``). A driver's sink buffers the records and writes them
where it likes: ``aicp.live.store`` writes SQLite; ``aicp.live.store_jetstream`` puts
one JetStream KV entry per binding, seen id and outcome, with the expiry as the entry's
TTL, in buckets several routers share (``RouterProtocol.learn_binding`` takes in the
bindings the others store). A sink call must be cheap and must not call back into the core: it
runs on the routing hot path (two records per task: the task's id and its outcome).

``Recorder`` is the in-memory sink: the reference a backend is tested against, and
what the core tests use to restart a router without a file.

Expiries are in the core's clock (``now``: wall-clock seconds in the live driver),
so they stay meaningful across a restart.
"""

from __future__ import annotations

from typing import Protocol

import msgspec


class Binding(msgspec.Struct, frozen=True, gc=False):
    """``peer_id`` is bound to ``key`` (text form, ``ed25519:...``) as ``role``.

    ``ephemeral``: the id was registered with ``ephemeral: true`` (docs/PROTOCOL.md §4.4).
    Such a binding ends with ``StateSink.unbind`` when the router frees it; any other never does.
    """

    peer_id: str
    key: str
    role: str
    ephemeral: bool = False


class Seen(msgspec.Struct, frozen=True, gc=False):
    """Message ``msg_id`` from ``sender`` must be refused as a duplicate until ``expiry``.

    ``task`` marks a task the router admitted: if it has no outcome when the router
    restarts, it was interrupted, and its resubmission is told so instead of running twice.
    """

    sender: str
    msg_id: str
    expiry: float
    task: bool = False


class StoredOutcome(msgspec.Struct, frozen=True, gc=False):
    """The one outcome of task ``key`` (``protocol.task_key``): ``frame`` verbatim, until ``expiry``.

    ``fingerprint`` (what the task was: method and payload digest) and ``assignees``
    (the agents it was dispatched to) let a resubmission with other contents, or a late
    result, be told apart after a restart as before it; empty when the core keeps none.
    """

    key: str
    frame: bytes
    expiry: float
    fingerprint: bytes = b""
    assignees: tuple[str, ...] = ()


class Snapshot(msgspec.Struct, kw_only=True):
    """Everything a restarted router restores. Any order; expired entries are skipped."""

    bindings: list[Binding] = msgspec.field(default_factory=list)
    seen: list[Seen] = msgspec.field(default_factory=list)
    outcomes: list[StoredOutcome] = msgspec.field(default_factory=list)


class StateSink(Protocol):
    """Where the core reports each change of its lasting state. Calls must not block."""

    def bind(self, binding: Binding) -> None: ...

    def unbind(self, binding: Binding) -> None:
        """An ephemeral ``binding`` was freed: forget it (only if the id is still bound to its key)."""
        ...

    def seen(self, seen: Seen) -> None: ...

    def outcome(self, outcome: StoredOutcome) -> None: ...

    def touch(self, binding: Binding, now: float) -> None:
        """``binding``'s peer (not ephemeral) was seen at ``now``: it registered again, or is connected
        (``RouterProtocol.touch_connected``). A store that expires bindings not seen for a while counts from here."""
        ...


class Recorder:
    """An in-memory ``StateSink`` that keeps the latest record per key.

    Memory: O(bindings + seen ids + outcomes) recorded since the last ``purge``; every
    call is O(1). ``snapshot(now)`` is O(entries).
    """

    def __init__(self) -> None:
        self.bindings: dict[str, Binding] = {}
        self.seen_ids: dict[tuple[str, str], Seen] = {}
        self.outcomes: dict[str, StoredOutcome] = {}
        self.last_seen: dict[str, float] = {}  # peer id -> the last ``touch``
        self.records = 0

    def bind(self, binding: Binding) -> None:
        self.bindings[binding.peer_id] = binding
        self.records += 1

    def unbind(self, binding: Binding) -> None:
        stored = self.bindings.get(binding.peer_id)
        if stored is not None and stored.key == binding.key:
            del self.bindings[binding.peer_id]
        self.records += 1

    def seen(self, seen: Seen) -> None:
        self.seen_ids[(seen.sender, seen.msg_id)] = seen
        self.records += 1

    def outcome(self, outcome: StoredOutcome) -> None:
        self.outcomes[outcome.key] = outcome
        self.records += 1

    def touch(self, binding: Binding, now: float) -> None:
        self.last_seen[binding.peer_id] = now
        self.records += 1

    def purge(self, now: float) -> None:
        """Forget expired seen ids and outcomes (bindings stay until ``unbind``)."""
        self.seen_ids = {k: s for k, s in self.seen_ids.items() if s.expiry > now}
        self.outcomes = {k: o for k, o in self.outcomes.items() if o.expiry > now}

    def snapshot(self, now: float) -> Snapshot:
        self.purge(now)
        return Snapshot(bindings=list(self.bindings.values()), seen=list(self.seen_ids.values()), outcomes=list(self.outcomes.values()))
