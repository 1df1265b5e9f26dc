"""The router's lasting state in one SQLite file (``aicp serve --state FILE``).

``SqliteStore`` is the live driver's ``aicp.state.StateSink``. The core calls it on the
routing hot path; each call only appends the record to a list (O(1), no I/O). Every
``batch_s`` (default 10 ms) while records wait, a callback on the event loop writes them
in one transaction (``executemany`` of ``INSERT OR REPLACE``, then ``COMMIT``): a few
microseconds per record in SQLite's C code, no fsync, and no other thread involved.
SQLite runs in WAL mode with ``synchronous=NORMAL`` and no automatic checkpoint. A
maintenance thread with its own connection checkpoints the WAL into the database once
a second (the only fsync) and deletes expired rows every ``purge_every_s`` (5 s): one statement each, so it
hardly ever contends with the event loop for the interpreter lock. (Writing from a
thread instead costs an interpreter-lock hand-over per row: on a loaded machine that cut
the router's throughput to a fifth in ``aicp bench --state-overhead``.) If a commit finds
the file locked by that thread, the batch stays queued for the next one.

**What a crash can lose.** A ``SIGKILL`` loses the records not yet committed: those of
the last ``batch_s``. A committed transaction survives a process crash; a power loss or
kernel crash may also lose the transactions since the last checkpoint (at most about a
second). What the loss means is in docs/SECURITY.md. ``close()`` writes everything.

**Retention.** Bindings of chosen ids are kept for good (at most ``max_peers`` rows),
unless opened with ``binding_ttl_s`` (``aicp serve --binding-ttl``): then a binding whose
peer was last seen (bound, registered again, or connected at a ``touch_connected``, every
``touch_every_s``) more than ``binding_ttl_s`` ago is deleted at open and not restored. An
ephemeral one (docs/PROTOCOL.md §4.4) is deleted when the router frees it, ``window_s``
after its controller left and its last task ended (a restart counts as leaving). Seen ids and
outcomes carry their expiry (wall-clock seconds); expired rows are deleted every 5 s
and at open, so the file holds about (message rate x (window + 5 s)) seen rows and
(task rate x (window + 5 s)) outcomes, like the router's memory. SQLite reuses freed pages: the
file stays at its peak size and does not grow beyond it.

**A damaged file** (not SQLite, failing ``PRAGMA quick_check``, another program's
database, a newer schema, or rows the core refuses) raises ``StateFileError`` at open:
the router refuses to start rather than start empty, which would silently hand every
bound id to the first key that claims it. Move the file aside to start empty on purpose.

Tables (one row per key; ``aicp.live.store_jetstream`` holds the same entries in JetStream KV):

* ``bindings(peer_id PK, key, role, ephemeral, seen)``: ``seen``, wall-clock time the peer was last
  seen (schema 3; a schema 2 file gets it at open, set to that time). Schema 1 had no ``ephemeral``: it is added at open, 0
* ``seen(sender, msg_id, expiry, task)``, primary key ``(sender, msg_id)``
* ``outcomes(key PK, frame BLOB, expiry, fingerprint BLOB, assignees)`` (a JSON list)
* ``meta(name PK, value)``: ``router_key`` of the last router that wrote the file
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from aicp.state import Binding, Seen, Snapshot, StoredOutcome

log = logging.getLogger("aicp.live.store")

APPLICATION_ID = 0x41494350  # "AICP"
SCHEMA_VERSION = 3  # 2: bindings.ephemeral; 3: bindings.seen

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (peer_id TEXT PRIMARY KEY, key TEXT NOT NULL, role TEXT NOT NULL,
                                     ephemeral INTEGER NOT NULL DEFAULT 0, seen REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (sender TEXT NOT NULL, msg_id TEXT NOT NULL, expiry REAL NOT NULL, task INTEGER NOT NULL,
                                 PRIMARY KEY (sender, msg_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (key TEXT PRIMARY KEY, frame BLOB NOT NULL, expiry REAL NOT NULL,
                                     fingerprint BLOB NOT NULL, assignees TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

class Unbind(msgspec.Struct, frozen=True, gc=False):
    """A sink's record of ``StateSink.unbind``: delete ``binding`` if the id is still bound to its key."""

    binding: Binding


class Touch(msgspec.Struct, frozen=True, gc=False):
    """A sink's record of ``StateSink.touch``: ``binding``'s peer was seen at ``now``."""

    binding: Binding
    now: float


Record = Binding | Unbind | Seen | StoredOutcome | Touch

#: Longest time between two ``touch_connected`` calls with a ``binding_ttl_s``: a tenth of it, at most this.
MAX_TOUCH_EVERY_S = 3600.0


class StateFileError(Exception):
    """The state file cannot be used; the message names the file and what is wrong."""


class SqliteStore:
    """A ``StateSink`` that commits to SQLite in batches on the event loop. Open with ``SqliteStore.open(path)``.

    Memory: the list of records not yet committed, at most ``max_backlog``; past that
    (the file stays locked or the disk fails for a long time), records are dropped and
    counted in ``dropped``.
    """

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        snapshot: Snapshot,
        batch_s: float = 0.010,
        max_backlog: int = 1_000_000,
        purge_every_s: float = 5.0,
        binding_ttl_s: float | None = None,
    ) -> None:
        self.path = path
        self.binding_ttl_s = binding_ttl_s
        #: how often the driver should call ``RouterProtocol.touch_connected`` (None: never, bindings are kept for good)
        self.touch_every_s = None if binding_ttl_s is None else min(binding_ttl_s / 10.0, MAX_TOUCH_EVERY_S)
        self.snapshot = snapshot  # what the file held at open, for RouterProtocol.restore
        self.batch_s = batch_s
        self.purge_every_s = purge_every_s
        self.max_backlog = max_backlog
        self._db = db
        self._buffer: list[Record] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self.written = 0  # records committed (or lost to a write error)
        self.commits = 0
        self.commit_seconds = 0.0  # time the event loop spent committing (a commit blocks it)
        self.commit_max_s = 0.0  # the longest single commit
        self.busy = 0  # commits put off because the maintenance thread held the file
        self.dropped = 0
        self.errors = 0
        self.expired = 0  # bindings deleted at open: not seen for binding_ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls, path: str | Path, now: float | None = None, router_key: str | None = None, batch_s: float = 0.010, purge_every_s: float = 5.0,
        binding_ttl_s: float | None = None,
    ) -> SqliteStore:
        """Open or create the file, check it, drop expired rows and read the rest. Raises ``StateFileError``.

        ``binding_ttl_s``: also drop the bindings (not ephemeral) whose peer was last seen longer ago than that.
        """
        if binding_ttl_s is not None and not binding_ttl_s > 0:
            raise ValueError(f"binding_ttl_s must be positive, not {binding_ttl_s!r}")
        p = Path(path)
        now = time.time() if now is None else now
        try:
            db = sqlite3.connect(p, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateFileError(f"cannot open state file {p}: {exc}") from exc
        try:
            snapshot, expired = cls._prepare(db, p, now, router_key, binding_ttl_s)
        except sqlite3.Error as exc:
            db.close()
            raise StateFileError(f"state file {p} is damaged or not an SQLite database ({exc}); move it aside to start with an empty state") from exc
        except StateFileError:
            db.close()
            raise
        db.execute("PRAGMA busy_timeout=0")  # the event loop never waits for the file: a locked commit is retried later
        store = cls(p, db, snapshot, batch_s, purge_every_s=purge_every_s, binding_ttl_s=binding_ttl_s)
        store.expired = expired
        return store

    @staticmethod
    def _prepare(db: sqlite3.Connection, p: Path, now: float, router_key: str | None, binding_ttl_s: float | None = None) -> tuple[Snapshot, int]:
        """Check and upgrade the file, drop what expired; returns what it holds and how many bindings expired (``binding_ttl_s``)."""
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and app_id != APPLICATION_ID:
            raise StateFileError(f"{p} is an SQLite database but not an AICP state file (application_id {app_id:#x}); refusing to touch it")
        if version > SCHEMA_VERSION:
            raise StateFileError(f"{p} has state schema {version}; this router knows {SCHEMA_VERSION}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateFileError(f"state file {p} failed its integrity check ({check}); move it aside to start with an empty state")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (and their fsync) run on the maintenance thread
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.executescript(_SCHEMA)
        if "ephemeral" not in {row[1] for row in db.execute("PRAGMA table_info(bindings)")}:  # a schema 1 file
            db.execute("ALTER TABLE bindings ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0")
        if "seen" not in {row[1] for row in db.execute("PRAGMA table_info(bindings)")}:  # a schema 1 or 2 file
            db.execute("ALTER TABLE bindings ADD COLUMN seen REAL")
        db.execute("BEGIN")
        db.execute("UPDATE bindings SET seen = ? WHERE seen IS NULL", (now,))  # an expiry counts from the upgrade
        gone = 0
        if binding_ttl_s is not None:
            gone = db.execute("DELETE FROM bindings WHERE ephemeral = 0 AND seen < ?", (now - binding_ttl_s,)).rowcount
            if gone:
                log.info("state file %s: %d binding(s) not seen for %g s forgotten", p, gone, binding_ttl_s)
        db.execute("DELETE FROM seen WHERE expiry <= ?", (now,))
        db.execute("DELETE FROM outcomes WHERE expiry <= ?", (now,))
        if router_key is not None:
            row = db.execute("SELECT value FROM meta WHERE name = 'router_key'").fetchone()
            if row is not None and row[0] != router_key:
                log.warning("state file %s was written by router key %s, this router has %s: peers that pinned the old key will refuse it",
                            p, row[0], router_key)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('router_key', ?)", (router_key,))
        db.execute("COMMIT")
        try:
            return Snapshot(
                bindings=[Binding(str(a), str(b), str(c), bool(d)) for a, b, c, d in db.execute("SELECT peer_id, key, role, ephemeral FROM bindings")],
                seen=[Seen(str(a), str(b), float(c), bool(d)) for a, b, c, d in db.execute("SELECT sender, msg_id, expiry, task FROM seen")],
                outcomes=[
                    StoredOutcome(str(a), bytes(b), float(c), bytes(d), tuple(msgspec.json.decode(e, type=list[str])))
                    for a, b, c, d, e in db.execute("SELECT key, frame, expiry, fingerprint, assignees FROM outcomes")
                ],
            ), gone
        except (TypeError, ValueError, msgspec.DecodeError) as exc:
            raise StateFileError(f"state file {p} holds a row of the wrong type ({exc})") from exc

    # ------------------------------------------------------------------ StateSink (the event loop's thread)
    def _add(self, record: Record) -> None:
        buffer = self._buffer
        if len(buffer) >= self.max_backlog:
            self.dropped += 1
            return
        buffer.append(record)
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.batch_s, self._flush_soon)

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
                "busy": self.busy, "commit_seconds": self.commit_seconds, "commit_max_seconds": self.commit_max_s,
                "bindings_expired": self.expired}

    @property
    def backlog(self) -> int:
        """Records handed over but not committed yet."""
        return len(self._buffer)

    # ------------------------------------------------------------------ life cycle
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Commit batches on ``loop`` (without one, only ``flush()`` and ``close()`` write) and start maintenance."""
        self._loop = loop
        if self._buffer and loop is not None and self._flush_handle is None:
            self._flush_handle = loop.call_later(self.batch_s, self._flush_soon)
        if self._thread is None:
            self._thread = threading.Thread(target=self._maintain, name="aicp-state-maintenance", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write every record handed over so far, stop maintenance and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)
        self.flush(wait=True)
        self._db.close()

    # ------------------------------------------------------------------ writing
    def _flush_soon(self) -> None:
        self._flush_handle = None
        if not self.flush() and self._buffer and self._loop is not None and not self._closed:
            self._flush_handle = self._loop.call_later(self.batch_s, self._flush_soon)  # locked: try again

    def flush(self, wait: bool = False) -> bool:
        """Commit the waiting records in one transaction. False if the file was locked (they stay queued).

        ``wait``: wait for the lock (up to 10 s) instead of putting the batch off.
        """
        batch = self._buffer
        if not batch:
            return True
        t0 = time.perf_counter()
        seen, outcomes = [], []
        by_id: dict[str, Binding | Unbind | Touch] = {}  # the last binding change per id wins: a batch may free an id and bind it again
        wall = time.time()
        for r in batch:
            if isinstance(r, Seen):
                seen.append((r.sender, r.msg_id, r.expiry, int(r.task)))
            elif isinstance(r, StoredOutcome):
                outcomes.append((r.key, r.frame, r.expiry, r.fingerprint, msgspec.json.encode(r.assignees).decode()))
            elif isinstance(r, (Unbind, Touch)):
                by_id[r.binding.peer_id] = r
            else:
                by_id[r.peer_id] = r
        bindings = [(r.peer_id, r.key, r.role, int(r.ephemeral), wall) for r in by_id.values() if isinstance(r, Binding)]
        bindings += [(t.peer_id, t.key, t.role, int(t.ephemeral), r.now) for r in by_id.values() if isinstance(r, Touch) for t in (r.binding,)]
        unbound = [(r.binding.peer_id, r.binding.key) for r in by_id.values() if isinstance(r, Unbind)]
        db = self._db
        try:
            if wait:
                db.execute("PRAGMA busy_timeout=10000")
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                self.busy += 1
                return False
            return self._failed(batch, exc)
        finally:
            if wait:
                db.execute("PRAGMA busy_timeout=0")
        self._buffer = []
        try:
            if bindings:
                db.executemany("INSERT OR REPLACE INTO bindings (peer_id, key, role, ephemeral, seen) VALUES (?, ?, ?, ?, ?)", bindings)
            if unbound:
                db.executemany("DELETE FROM bindings WHERE peer_id = ? AND key = ?", unbound)
            if seen:
                db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)", seen)
            if outcomes:
                db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)", outcomes)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return self._failed(batch, exc)
        self.commits += 1
        self.written += len(batch)
        took = time.perf_counter() - t0
        self.commit_seconds += took
        if took > self.commit_max_s:
            self.commit_max_s = took
        return True

    def _failed(self, batch: list[Record], exc: Exception) -> bool:
        """A write error other than a lock: the batch is lost (counted and logged), the router goes on."""
        self.errors += 1
        self.written += len(batch)
        if batch is self._buffer:
            self._buffer = []
        log.error("could not write %d state record(s) to %s, they are lost: %s", len(batch), self.path, exc)
        return True

    # ------------------------------------------------------------------ the maintenance thread
    def _maintain(self) -> None:
        """Checkpoint the WAL once a second (or per ``purge_every_s`` if shorter); purge every ``purge_every_s``. Own connection.

        The tables have no index on ``expiry``: an index costs every insert on the hot path
        about a third more, while a purge that scans the table every few seconds runs here.
        """
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error:
            log.exception("state maintenance cannot open %s", self.path)
            return
        try:
            db.execute("PRAGMA busy_timeout=1000")
            tick = min(1.0, self.purge_every_s)
            last_purge = time.monotonic()
            while not self._stop.wait(tick):
                if time.monotonic() - last_purge >= self.purge_every_s:
                    last_purge = time.monotonic()
                    self._purge(db, time.time())
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("state checkpoint of %s put off: %s", self.path, exc)
        finally:
            db.close()

    def _purge(self, db: sqlite3.Connection, now: float) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM seen WHERE expiry <= ?", (now,))
            db.execute("DELETE FROM outcomes WHERE expiry <= ?", (now,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("state maintenance of %s put off: %s", self.path, exc)
