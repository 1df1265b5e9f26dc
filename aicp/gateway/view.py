"""The live registry as the gateway sees it: the router's ``GET /agents``, cached briefly.

The router already serves its registry over plain HTTP on its WebSocket port, so
the gateway reads it from there rather than adding a message to the protocol.
A read is cached for ``ttl_s`` (default 1 s), so a burst of card or capability
requests costs one round trip. A capability is *live* when at least one agent
that registered it is active and connected. Building the view is O(agents × capabilities
per agent) once per refresh; ``capabilities()`` and ``agents_with()`` are then O(1) lookups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

log = logging.getLogger("aicp.gateway.view")


def http_base(ws_url: str) -> str:
    """``ws://h:p/x`` → ``http://h:p`` (``wss`` → ``https``)."""
    scheme, _, rest = ws_url.partition("://")
    host = rest.split("/", 1)[0]
    return ("https" if scheme == "wss" else "http") + "://" + host


class RouterView:
    """A cached copy of the router's ``/agents`` answer."""

    def __init__(self, router_url: str, ttl_s: float = 1.0, client: httpx.AsyncClient | None = None) -> None:
        self.url = http_base(router_url) + "/agents"
        self.ttl_s = ttl_s
        self._client = client or httpx.AsyncClient(timeout=5.0)
        self._fetched_at = -1.0e9
        self._data: dict[str, Any] = {"agents": []}
        self._by_capability: dict[str, list[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self.reachable = False

    def invalidate(self) -> None:
        """Forget the cached copy: the next read asks the router again (the gateway calls it on each registration,
        since after a reconnection the router may be another process whose registry the old copy does not describe)."""
        self._fetched_at = -1.0e9

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._fetched_at < self.ttl_s:
            return
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self.ttl_s:
                return
            try:
                resp = await self._client.get(self.url)
                resp.raise_for_status()
                data = resp.json()
                self.reachable = True
            except (httpx.HTTPError, ValueError) as exc:
                log.info("router registry unreachable at %s: %s", self.url, exc)
                data = {"agents": []}
                self.reachable = False
            self._data = data
            by_cap: dict[str, list[dict[str, Any]]] = {}
            for agent in data.get("agents", []):
                if agent.get("status") == "active" and agent.get("connected", True):
                    for cap in agent.get("capabilities", []):
                        by_cap.setdefault(cap, []).append(agent)
            self._by_capability = by_cap
            self._fetched_at = time.monotonic()

    async def agents(self) -> dict[str, Any]:
        await self.refresh()
        return self._data

    async def capabilities(self) -> dict[str, list[dict[str, Any]]]:
        """Live capability → its active, connected agents."""
        await self.refresh()
        return self._by_capability

    async def close(self) -> None:
        await self._client.aclose()
