"""Bounded memory of recently seen message ids, and of recent task outcomes.

A message is fresh when ``|ts - now| <= window``. An id must be remembered for as
long as a copy of its message could still pass that check: until ``ts + window``.
Entries are kept in arrival order and dropped from the front once expired, so
the cache covers the window. When it is full of unexpired ids it refuses new
ones (the caller answers ``overloaded``) rather than forget one early, which
would reopen the replay window.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ReplayCache:
    def __init__(self, window_s: float, max_entries: int) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def expiry(self, key: tuple[str, str]) -> float | None:
        """Until when ``key`` is remembered (None if it is not)."""
        return self._seen.get(key)

    def restore(self, key: tuple[str, str], expiry: float, now: float) -> bool:
        """Remember ``key`` until ``expiry`` (from a snapshot); False if expired or the cache is full.

        Call in order of ``expiry``, so that the oldest entries stay at the front for ``purge``.
        """
        if expiry <= now or len(self._seen) >= self.max_entries:
            return False
        self._seen[key] = expiry
        return True

    def is_fresh(self, ts: float, now: float) -> bool:
        return abs(ts - now) <= self.window_s

    def purge(self, now: float) -> None:
        seen = self._seen
        while seen:
            _, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            seen.popitem(last=False)

    def add(self, key: tuple[str, str], ts: float, now: float) -> bool:
        """Remember ``key``; False if it is already known or the cache is full."""
        seen = self._seen
        if key in seen:
            return False
        # Drop up to two expired ids from the front on every add, so the cache holds about
        # rate x window ids instead of growing to max_entries before it is ever purged.
        for _ in range(2):
            if not seen:
                break
            first, expiry = next(iter(seen.items()))
            if expiry > now:
                break
            del seen[first]
        if len(seen) >= self.max_entries:
            self.purge(now)
            if len(seen) >= self.max_entries:
                return False
        seen[key] = max(ts, now) + self.window_s
        return True


class OutcomeCache(Generic[V]):
    """Task outcomes kept for resubmissions: bounded in count and in age (LRU by insertion)."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, now: float) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return None
        return item[1]

    def restore(self, key: str, value: V, expiry: float, now: float) -> None:
        """Keep ``value`` until ``expiry`` (from a snapshot). Call in order of ``expiry``."""
        if expiry > now:
            self._put(key, value, expiry, now)

    def put(self, key: str, value: V, now: float) -> float:
        """Keep ``value`` for ``ttl_s``; returns its expiry."""
        expiry = now + self.ttl_s
        self._put(key, value, expiry, now)
        return expiry

    def _put(self, key: str, value: V, expiry: float, now: float) -> None:
        items = self._items
        items[key] = (expiry, value)
        items.move_to_end(key)
        while len(items) > self.max_entries:
            items.popitem(last=False)
        while items:
            first = next(iter(items.values()))
            if first[0] > now:
                break
            items.popitem(last=False)
