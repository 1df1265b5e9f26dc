"""The router's lasting state in one SQLite file (``aicp serve --state FILE``).

``SqliteStore`` is the live driver's ``aicp.state.StateSink``. The core calls it on the
routing hot path; each call only puts the record on a queue (O(1), no I/O). One writer
thread takes whatever has queued, waits ``batch_s`` (default 5 ms) so that records group,
and writes the batch in one transaction (``INSERT OR REPLACE``, then ``COMMIT``). SQLite
runs in WAL mode with ``synchronous=NORMAL``: a commit is a write to the WAL, no fsync.

**What a crash can lose.** A ``SIGKILL`` loses the records not yet committed: those of
the last ``batch_s`` plus one commit's time (a few ms under load). A committed
transaction survives a process crash; a power loss or kernel crash may also lose the
transactions since the last WAL checkpoint (``synchronous=NORMAL``). What the loss means
is in docs/SECURITY.md. On a graceful stop ``close()`` writes everything.

**Retention.** Bindings are kept for good (at most ``max_peers`` rows). Seen ids and
outcomes carry their expiry (wall-clock seconds); the writer deletes expired rows once
a second and on open, so the file holds about (message rate x window) seen rows and
(task rate x window) outcomes, like the router's memory. SQLite reuses freed pages: the
file stays at its peak size and does not grow beyond it.

**A damaged file** (not SQLite, failing ``PRAGMA quick_check``, another program's
database, a newer schema, or rows the core refuses) raises ``StateFileError`` at open:
the router refuses to start rather than start empty, which would silently hand every
bound id to the first key that claims it. Move the file aside to start empty on purpose.

Tables (one row per key; a JetStream key-value backend would hold the same entries):

* ``bindings(peer_id PK, key, role)``
* ``seen(sender, msg_id, expiry, task)``, primary key ``(sender, msg_id)``, index on ``expiry``
* ``outcomes(key PK, frame BLOB, expiry, fingerprint BLOB, assignees)`` (a JSON list), index on ``expiry``
* ``meta(name PK, value)``: ``router_key`` of the last router that wrote the file
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from aicp.state import Binding, Seen, Snapshot, StoredOutcome

log = logging.getLogger("aicp.live.store")

APPLICATION_ID = 0x41494350  # "AICP"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bindings (peer_id TEXT PRIMARY KEY, key TEXT NOT NULL, role TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (sender TEXT NOT NULL, msg_id TEXT NOT NULL, expiry REAL NOT NULL, task INTEGER NOT NULL,
                                 PRIMARY KEY (sender, msg_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expiry);
CREATE TABLE IF NOT EXISTS outcomes (key TEXT PRIMARY KEY, frame BLOB NOT NULL, expiry REAL NOT NULL,
                                     fingerprint BLOB NOT NULL, assignees TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outcomes_expiry ON outcomes (expiry);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

Record = Binding | Seen | StoredOutcome
_STOP = object()


class StateFileError(Exception):
    """The state file cannot be used; the message names the file and what is wrong."""


class SqliteStore:
    """A ``StateSink`` that writes to SQLite from its own thread. Open with ``SqliteStore.open(path)``.

    Memory: the queue holds the records not yet written, at most ``max_backlog``; past
    that, records are dropped and counted in ``dropped`` (the writer is far faster than the
    router, so this only happens if the disk stalls).
    """

    def __init__(
        self, path: Path, db: sqlite3.Connection, snapshot: Snapshot, batch_s: float = 0.005, max_backlog: int = 1_000_000, purge_every_s: float = 1.0
    ) -> None:
        self.path = path
        self.snapshot = snapshot  # what the file held at open, for RouterProtocol.restore
        self.batch_s = batch_s
        self.purge_every_s = purge_every_s
        self.max_backlog = max_backlog
        self._db = db
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._put = 0  # written only by the caller's thread
        self.written = 0  # records committed (or lost to a write error); changed only by the writer thread
        self.commits = 0
        self.dropped = 0
        self.errors = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls, path: str | Path, now: float | None = None, router_key: str | None = None, batch_s: float = 0.005, purge_every_s: float = 1.0
    ) -> SqliteStore:
        """Open or create the file, check it, drop expired rows and read the rest. Raises ``StateFileError``."""
        p = Path(path)
        now = time.time() if now is None else now
        try:
            db = sqlite3.connect(p, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateFileError(f"cannot open state file {p}: {exc}") from exc
        try:
            snapshot = cls._prepare(db, p, now, router_key)
        except sqlite3.Error as exc:
            db.close()
            raise StateFileError(f"state file {p} is damaged or not an SQLite database ({exc}); move it aside to start with an empty state") from exc
        except StateFileError:
            db.close()
            raise
        return cls(p, db, snapshot, batch_s, purge_every_s=purge_every_s)

    @staticmethod
    def _prepare(db: sqlite3.Connection, p: Path, now: float, router_key: str | None) -> Snapshot:
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
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
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
                bindings=[Binding(str(a), str(b), str(c)) for a, b, c in db.execute("SELECT peer_id, key, role FROM bindings")],
                seen=[Seen(str(a), str(b), float(c), bool(d)) for a, b, c, d in db.execute("SELECT sender, msg_id, expiry, task FROM seen")],
                outcomes=[
                    StoredOutcome(str(a), bytes(b), float(c), bytes(d), tuple(msgspec.json.decode(e, type=list[str])))
                    for a, b, c, d, e in db.execute("SELECT key, frame, expiry, fingerprint, assignees FROM outcomes")
                ],
            )
        except (TypeError, ValueError, msgspec.DecodeError) as exc:
            raise StateFileError(f"state file {p} holds a row of the wrong type ({exc})") from exc

    # ------------------------------------------------------------------ StateSink (the caller's thread)
    def _enqueue(self, record: Record) -> None:
        if self._put - self.written >= self.max_backlog:
            self.dropped += 1
            return
        self._put += 1
        self._queue.put(record)

    def bind(self, binding: Binding) -> None:
        self._enqueue(binding)

    def seen(self, seen: Seen) -> None:
        self._enqueue(seen)

    def outcome(self, outcome: StoredOutcome) -> None:
        self._enqueue(outcome)

    def stats(self) -> dict[str, int]:
        """For /metrics (``aicp_state_*``)."""
        return {"written": self.written, "commits": self.commits, "backlog": self.backlog, "dropped": self.dropped, "errors": self.errors}

    @property
    def backlog(self) -> int:
        """Records handed over but not committed yet."""
        return self._put - self.written

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aicp-state-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write every record handed over so far, stop the writer and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
        else:
            self._write(self._drain([]))
        self._db.close()

    # ------------------------------------------------------------------ the writer thread
    def _drain(self, batch: list[object]) -> list[object]:
        get = self._queue.get_nowait
        while True:
            try:
                batch.append(get())
            except queue.Empty:
                return batch

    def _run(self) -> None:
        last_purge = time.time()
        while True:
            first = self._queue.get()
            if first is not _STOP and self.batch_s > 0:
                time.sleep(self.batch_s)  # let a batch gather: one commit for many records
            batch = self._drain([first])
            stop = any(r is _STOP for r in batch)
            self._write(batch)
            now = time.time()
            if now - last_purge >= self.purge_every_s:
                last_purge = now
                self._purge(now)
            if stop:
                self._write(self._drain([]))
                return

    def _write(self, batch: list[object]) -> None:
        bindings, seen, outcomes = [], [], []
        for r in batch:
            if isinstance(r, Seen):
                seen.append((r.sender, r.msg_id, r.expiry, int(r.task)))
            elif isinstance(r, StoredOutcome):
                outcomes.append((r.key, r.frame, r.expiry, r.fingerprint, msgspec.json.encode(r.assignees).decode()))
            elif isinstance(r, Binding):
                bindings.append((r.peer_id, r.key, r.role))
        n = len(bindings) + len(seen) + len(outcomes)
        if not n:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            if bindings:
                db.executemany("INSERT OR REPLACE INTO bindings VALUES (?, ?, ?)", bindings)
            if seen:
                db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)", seen)
            if outcomes:
                db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)", outcomes)
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error:
            self.errors += 1
            log.exception("could not write %d state record(s) to %s: they are lost", n, self.path)
            if db.in_transaction:
                db.execute("ROLLBACK")
        self.written += n

    def _purge(self, now: float) -> None:
        try:
            db = self._db
            db.execute("BEGIN")
            db.execute("DELETE FROM seen WHERE expiry <= ?", (now,))
            db.execute("DELETE FROM outcomes WHERE expiry <= ?", (now,))
            db.execute("COMMIT")
        except sqlite3.Error:
            self.errors += 1
            log.exception("could not purge expired state from %s", self.path)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
