"""Bearer API keys and per-key request rates.

The key file (``--api-keys FILE``) has one key per line::

    # token                              name     methods it may submit (shell patterns; * = all)
    3f9c0c5e7d0b4b6e9a1f2d3c4b5a6978     alice    text.classify echo
    8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a     ci       *

Blank lines and lines starting with ``#`` are ignored. A request without a valid
``Authorization: Bearer TOKEN`` gets 401; a key that may not use the method gets
403. Without a key file every request is the anonymous principal, allowed every
method, and the gateway refuses to listen on anything but loopback.

Lookup is one dict access; the method check is O(patterns of that key).
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

from aicp.ratelimit import SourceLimiter

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Principal:
    """Who is calling: a named key and the methods it may submit."""

    __slots__ = ("_any", "_exact", "_patterns", "methods", "name")

    def __init__(self, name: str, methods: tuple[str, ...]) -> None:
        self.name = name
        self.methods = methods
        self._any = "*" in methods
        self._exact = frozenset(m for m in methods if not any(c in m for c in "*?[")) if not self._any else frozenset()
        self._patterns = tuple(m for m in methods if m not in self._exact)

    def may(self, method: str) -> bool:
        """O(1) for ``*`` and plain method names (checked on every request), O(patterns) for the others."""
        return self._any or method in self._exact or any(fnmatch.fnmatchcase(method, p) for p in self._patterns)


ANONYMOUS = Principal("anonymous", ("*",))


class KeyFileError(ValueError):
    pass


class ApiKeys:
    """Tokens → principals. ``ApiKeys(None)`` means no authentication (loopback only)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path
        self._by_token: dict[str, Principal] = {}
        if path is None:
            return
        for lineno, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) < 3:
                raise KeyFileError(f"{path}:{lineno}: expected 'TOKEN NAME METHOD...'")
            token, name, *methods = words
            if len(token) < 16:
                raise KeyFileError(f"{path}:{lineno}: a token must be at least 16 characters")
            if token in self._by_token:
                raise KeyFileError(f"{path}:{lineno}: duplicate token")
            self._by_token[token] = Principal(name, tuple(methods))

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def __len__(self) -> int:
        return len(self._by_token)

    def principal(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header, or None if it names no valid key."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self._by_token.get(token.strip())


class KeyRates:
    """A token bucket per principal: ``rate`` requests a second, ``burst`` at once; ``rate <= 0`` is no limit."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._limiter = SourceLimiter(rate, self.burst, max_keys) if rate > 0 else None

    def admit(self, name: str, now: float) -> bool:
        return self._limiter is None or self._limiter.admit(name, now)

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until a token is back (at least 1, as ``Retry-After`` counts in seconds)."""
        return max(1, math.ceil(1.0 / self.rate)) if self.rate > 0 else 1
