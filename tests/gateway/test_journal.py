"""The idempotency journal: survives a reload, skips a torn line, and stays bounded when rewritten."""

from __future__ import annotations

from pathlib import Path

from aicp.gateway.journal import IdempotencyJournal


def test_digests_survive_a_reload_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = IdempotencyJournal(path)
    j.record("idem:a:1", b"\x01" * 32)
    j.record("idem:a:2", b"\x02" * 32)
    with open(path, "a") as f:
        f.write("idem:a:3 0f0")  # a crash in the middle of a line
    again = IdempotencyJournal(path)
    assert again.digest_of("idem:a:1") == b"\x01" * 32 and again.digest_of("idem:a:2") == b"\x02" * 32
    assert again.digest_of("idem:a:3") is None and again.digest_of("idem:b:1") is None


def test_the_file_is_rewritten_with_the_newest_entries_when_it_doubles(tmp_path: Path) -> None:
    path = tmp_path / "j"
    j = IdempotencyJournal(path, max_entries=10)
    for i in range(45):
        j.record(f"idem:k:{i}", i.to_bytes(32, "big"))
    lines = path.read_text().splitlines()
    assert len(lines) <= 20
    reloaded = IdempotencyJournal(path, max_entries=10)
    assert reloaded.digest_of("idem:k:44") == (44).to_bytes(32, "big")
    assert reloaded.digest_of("idem:k:0") is None


def test_memory_only_without_a_path() -> None:
    j = IdempotencyJournal(None, max_entries=2)
    for i in range(3):
        j.record(f"t{i}", bytes([i]))
    assert j.digest_of("t0") is None and j.digest_of("t2") == b"\x02"
