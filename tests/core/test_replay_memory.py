"""The replay cache's size follows rate x window, not its hard cap (found by the live soak)."""

from __future__ import annotations

from aicp.replay import ReplayCache


def test_expired_ids_are_dropped_as_new_ones_arrive() -> None:
    cache = ReplayCache(window_s=10.0, max_entries=1_000_000)
    now = 0.0
    for i in range(10_000):  # 100 ids/s for 100 s
        now = i / 100.0
        assert cache.add(("peer", str(i)), now, now)
    assert len(cache) <= 100 * 10 + 2  # the ids of the last window, not all 10,000
    assert ("peer", "9999") in cache and ("peer", str(10_000 - 100 * 10)) in cache
    assert not cache.add(("peer", "9999"), now, now)  # still a duplicate inside its window
