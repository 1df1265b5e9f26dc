"""``aicp.live.store.SqliteStore`` on real SQLite files: round trip, expiry, and damaged files."""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest
from live_helpers import agent, run, serving, wait_until

from aicp import errors
from aicp.cli import serve
from aicp.inprocess import InProcessHub
from aicp.live.store import SCHEMA_VERSION, SqliteStore, StateFileError
from aicp.messages import Error
from aicp.peer import READY, PeerSession
from aicp.protocol import ProtocolConfig, RouterProtocol
from aicp.router import Router
from aicp.signing import Identity
from aicp.state import Binding, Seen, Snapshot, StoredOutcome

NOW = 1_000_000.0


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def test_records_written_by_the_thread_come_back_at_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path, now=NOW, router_key="ed25519:r")
    assert store.snapshot == Snapshot()
    store.start()
    key = Identity.generate().public_key_text
    store.bind(Binding("a1", key, "agent"))
    for i in range(1000):
        store.seen(Seen("ctl", f"m{i}", NOW + 60, task=i % 2 == 0))
    store.outcome(StoredOutcome("ctl\nm0", b'{"sig":"\x00 exact bytes"}', NOW + 60, b"\x01" * 32, ("a1", "a\n2")))
    store.close()
    assert store.backlog == 0 and store.written == 1002 and store.errors == 0 and store.dropped == 0
    assert store.commits < 1002  # batched

    again = SqliteStore.open(path, now=NOW + 1)
    snap = again.snapshot
    assert snap.bindings == [Binding("a1", key, "agent")]
    assert len(snap.seen) == 1000 and Seen("ctl", "m2", NOW + 60, True) in snap.seen and Seen("ctl", "m3", NOW + 60, False) in snap.seen
    assert snap.outcomes == [StoredOutcome("ctl\nm0", b'{"sig":"\x00 exact bytes"}', NOW + 60, b"\x01" * 32, ("a1", "a\n2"))]
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE name = 'router_key'").fetchone()[0] == "ed25519:r"
    db.close()


def test_expired_rows_are_deleted_at_open_and_bindings_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path, now=NOW)
    store.bind(Binding("a1", "ed25519:x", "agent"))
    store.seen(Seen("s", "old", NOW + 10))
    store.seen(Seen("s", "new", NOW + 100))
    store.outcome(StoredOutcome("k-old", b"x", NOW + 10))
    store.outcome(StoredOutcome("k-new", b"y", NOW + 100))
    store.close()  # never started: close writes synchronously
    assert _count(path, "seen") == 2 and _count(path, "outcomes") == 2
    later = SqliteStore.open(path, now=NOW + 50)
    assert [s.msg_id for s in later.snapshot.seen] == ["new"] and [o.key for o in later.snapshot.outcomes] == ["k-new"]
    assert len(later.snapshot.bindings) == 1
    later.close()
    assert _count(path, "seen") == 1 and _count(path, "outcomes") == 1  # gone from the file, not just skipped


def test_the_maintenance_thread_purges_expired_rows_while_running(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path, now=NOW, purge_every_s=0.05)
    store.start()
    store.seen(Seen("s", "long-gone", 1.0))  # expired by the wall clock the maintenance thread purges with
    store.outcome(StoredOutcome("k", b"x", 1.0))
    store.seen(Seen("s", "current", 4e9))
    while not store.flush():  # the maintenance thread may hold the file for a moment
        time.sleep(0.01)
    assert store.written == 3 and store.errors == 0
    deadline = time.monotonic() + 10
    while _count(path, "outcomes") or _count(path, "seen") != 1:
        assert time.monotonic() < deadline, "expired rows were never purged"
        time.sleep(0.02)
    store.close()
    assert _count(path, "seen") == 1 and _count(path, "outcomes") == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore.open(path, now=NOW).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StateFileError, match="schema"):
        SqliteStore.open(path, now=NOW)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path, now=NOW)
    for i in range(5000):
        store.seen(Seen("s", f"m{i}" * 20, NOW + 100))
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateFileError, match=str(path.name)):
        SqliteStore.open(path, now=NOW)


def test_a_row_the_core_refuses_stops_the_server_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore.open(path, now=NOW)
    store.bind(Binding("a1", "ed25519:not-a-key", "agent"))
    store.close()

    async def main() -> None:
        with pytest.raises(StateFileError, match="stored binding of 'a1'"):
            async with serving(store=SqliteStore.open(path)):
                pass

    run(main())


def test_on_the_event_loop_records_are_committed_within_a_few_batches(tmp_path: Path) -> None:
    """The live path: records are committed by a callback on the loop, without close()."""
    path = tmp_path / "s.db"

    async def main() -> None:
        store = SqliteStore.open(path, batch_s=0.005)
        store.start(asyncio.get_running_loop())
        try:
            for i in range(100):
                store.seen(Seen("s", f"m{i}", time.time() + 60))
            assert store.backlog == 100
            deadline = time.monotonic() + 10
            while store.backlog:
                assert time.monotonic() < deadline, "the loop never committed"
                await asyncio.sleep(0.005)
            assert _count(path, "seen") == 100 and 1 <= store.commits <= 3
        finally:
            store.close()

    run(main())


def test_an_unbound_ephemeral_binding_is_deleted_and_the_last_change_per_id_wins(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    k1, k2 = Identity.generate().public_key_text, Identity.generate().public_key_text
    store = SqliteStore.open(path, now=NOW)
    store.bind(Binding("chosen", k1, "controller"))
    store.bind(Binding("gone", k1, "controller", ephemeral=True))
    store.bind(Binding("kept", k1, "controller", ephemeral=True))
    store.bind(Binding("again", k1, "controller", ephemeral=True))
    store.flush()
    store.unbind(Binding("gone", k1, "controller", ephemeral=True))
    store.unbind(Binding("kept", k2, "controller", ephemeral=True))  # another key: not this row
    store.unbind(Binding("again", k1, "controller", ephemeral=True))  # freed, then bound again in the same batch
    store.bind(Binding("again", k2, "controller", ephemeral=True))
    store.close()
    later = SqliteStore.open(path, now=NOW)
    assert sorted(later.snapshot.bindings, key=lambda b: b.peer_id) == [
        Binding("again", k2, "controller", ephemeral=True),
        Binding("chosen", k1, "controller"),
        Binding("kept", k1, "controller", ephemeral=True),
    ]
    later.close()


def test_a_schema_1_file_opens_and_its_bindings_stay_bound_for_good(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript("""
        PRAGMA application_id=1095320400;
        PRAGMA user_version=1;
        CREATE TABLE bindings (peer_id TEXT PRIMARY KEY, key TEXT NOT NULL, role TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO bindings VALUES ('a1', 'ed25519:x', 'agent');
    """)
    db.close()
    store = SqliteStore.open(path, now=NOW)
    assert store.snapshot.bindings == [Binding("a1", "ed25519:x", "agent")]
    store.bind(Binding("c-1", "ed25519:y", "controller", ephemeral=True))
    store.close()
    again = SqliteStore.open(path, now=NOW)
    assert Binding("c-1", "ed25519:y", "controller", ephemeral=True) in again.snapshot.bindings
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert db.execute("SELECT seen FROM bindings WHERE peer_id = 'a1'").fetchone()[0] == NOW  # an expiry would count from the upgrade
    db.close()


def test_a_router_restarted_on_its_file_keeps_the_rules_for_chosen_and_ephemeral_ids(tmp_path: Path) -> None:
    """The core on a real file, restarted: a chosen id stays bound; an ephemeral one is held a window, then its row is deleted."""
    router_key = Identity.generate()
    window = 60.0

    def hub_on(store: SqliteStore, now: float) -> InProcessHub:
        proto = RouterProtocol(router_key, Router(rng=random.Random(1)), ProtocolConfig(window_s=window))
        proto.restore(store.snapshot, now)
        proto.store = store
        return InProcessHub(proto, now)

    def register(hub: InProcessHub, peer_id: str, ident: Identity, ephemeral: bool) -> str | None:
        ep = hub.connect(PeerSession(ident, peer_id, "controller", ephemeral=ephemeral))
        hub.disconnect(ep)
        errs = [r.body.code for r in ep.inbox if isinstance(r.body, Error)]
        return errs[-1] if errs else (None if ep.session.state == READY else "not ready")

    path = tmp_path / "s.db"
    chosen, eph = Identity.generate(), Identity.generate()
    store = SqliteStore.open(path, now=NOW)
    hub = hub_on(store, NOW)
    assert register(hub, "chosen", chosen, False) is None and register(hub, "eph", eph, True) is None
    store.close()  # stopped (or killed after the commit) within the ephemeral id's window

    store = SqliteStore.open(path, now=NOW + 10)
    hub = hub_on(store, NOW + 10)
    assert register(hub, "eph", Identity.generate(), True) == errors.KEY_MISMATCH  # still held after the restart
    assert register(hub, "eph", eph, True) is None  # its owner is welcome back
    hub.advance(window)
    assert hub.proto.bound_ids == 1
    store.close()
    assert _count(path, "bindings") == 1  # the row is gone too

    store = SqliteStore.open(path, now=NOW + 10 * window)
    hub = hub_on(store, NOW + 10 * window)
    assert register(hub, "chosen", Identity.generate(), True) == errors.KEY_MISMATCH  # bound for good, across restarts
    assert register(hub, "eph", Identity.generate(), True) is None  # free: a new controller may take it
    store.close()


def test_with_a_binding_ttl_bindings_not_seen_for_that_long_are_forgotten_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    old, touched, fresh = (Binding(name, Identity.generate().public_key_text, "agent") for name in ("old", "touched", "fresh"))
    eph = Binding("c-1", Identity.generate().public_key_text, "controller", ephemeral=True)
    store = SqliteStore.open(path, now=NOW)
    for b in (old, touched, eph):
        store.bind(b)
    store.touch(touched, NOW + 500)  # without an expiry a touch writes nothing
    store.close()
    store = SqliteStore.open(path, now=NOW, binding_ttl_s=1000)
    assert store.touch_every_s == 100.0
    store.touch(touched, NOW + 500)
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE bindings SET seen = ? WHERE peer_id != 'touched'", (NOW - 10,))  # bound before NOW
    db.commit()
    db.close()
    store = SqliteStore.open(path, now=NOW + 1200)  # no expiry: every binding is kept
    assert len(store.snapshot.bindings) == 3
    store.bind(fresh)  # bound now (wall clock): far later than NOW
    store.close()
    store = SqliteStore.open(path, now=NOW + 1200, binding_ttl_s=1000)
    assert sorted(b.peer_id for b in store.snapshot.bindings) == ["c-1", "fresh", "touched"]  # an ephemeral one goes by its own rule
    assert store.stats()["bindings_expired"] == 1  # "old" (/metrics: aicp_state_bindings_expired_total)
    store.close()
    store = SqliteStore.open(path, now=NOW + 1600, binding_ttl_s=1000)
    assert sorted(b.peer_id for b in store.snapshot.bindings) == ["c-1", "fresh"]
    assert store.stats()["bindings_expired"] == 1  # "touched"
    store.close()
    with pytest.raises(ValueError):
        SqliteStore.open(path, binding_ttl_s=0)


def test_a_router_with_a_binding_ttl_touches_its_connected_peers_and_takes_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"

    def seen_of(peer_id: str) -> float:
        db = sqlite3.connect(path)
        try:
            row = db.execute("SELECT seen FROM bindings WHERE peer_id = ?", (peer_id,)).fetchone()
            return float(row[0]) if row is not None else 0.0
        finally:
            db.close()

    async def main() -> None:
        store = SqliteStore.open(path, binding_ttl_s=1.0)  # touch_connected every 0.1 s
        async with serving(store=store) as server, agent(server.url, "w", {"echo": lambda x: x}, identity=Identity.generate()):
            await wait_until(lambda: seen_of("w") > 0, what="the binding committed")
            first = seen_of("w")
            await wait_until(lambda: seen_of("w") > first, what="a touch of the connected agent")

    run(main())

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--state", str(tmp_path / "o.db"), "--binding-ttl", "86400"])
    built = serve.build_server(args).store
    assert isinstance(built, SqliteStore) and built.binding_ttl_s == 86400 and built.touch_every_s == 3600
    built.close()
    assert serve.main(["--state", str(tmp_path / "o.db"), "--binding-ttl", "0"]) == 2
    assert serve.main(["--binding-ttl", "60"]) == 2
    assert "--binding-ttl takes a positive number of seconds, with --state" in capsys.readouterr().err
