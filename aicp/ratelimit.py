"""Token buckets: per connection (messages) and per source address (new connections).

Time comes in as ``now``; nothing here reads a clock.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each admitted event takes one."""

    __slots__ = ("tokens", "updated")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.updated = now

    def take(self, now: float, rate: float, burst: float) -> bool:
        tokens = self.tokens + (now - self.updated) * rate
        self.updated = now
        if tokens > burst:
            tokens = burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class SourceLimiter:
    """One bucket per source (an IP address), at most ``max_sources`` of them (least recently seen go first).

    Forgetting a quiet source early only hands it a fresh, full bucket, so the memory
    bound never lets a busy source exceed its rate by more than one burst.
    """

    def __init__(self, rate: float, burst: float, max_sources: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.burst, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.take(now, self.rate, self.burst)
