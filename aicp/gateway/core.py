"""The gateway's state shared by the REST and A2A faces: identity, connection, tasks, keys and rates.

``Gateway.accept`` is the one way a task gets in, whichever face it came from: it
checks the method against the caller's key, applies the Idempotency-Key, and hands
the task to the link. It returns the task or a problem (status, code, detail).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Final, Literal

import msgspec
from msgspec import Raw

from aicp import errors
from aicp.gateway.auth import ApiKeys, KeyRates, Principal
from aicp.gateway.journal import IdempotencyJournal
from aicp.gateway.link import IDEMPOTENCY_CONFLICT, GatewayLink
from aicp.gateway.problems import FORBIDDEN, NOT_CONNECTED
from aicp.gateway.tasks import GatewayTask, TaskStore
from aicp.gateway.view import RouterView
from aicp.live.client import DEFAULT_URL
from aicp.signing import Identity

log = logging.getLogger("aicp.gateway")

#: An Idempotency-Key: the characters of an AICP id, at most 96 of them (the task id adds a prefix).
IDEMPOTENCY_KEY: Final = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,96}\Z")


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything ``aicp gateway`` can set (see ``aicp gateway --help``)."""

    router_url: str = DEFAULT_URL
    key_file: str = "gateway.key"
    gateway_id: str | None = None
    router_key: str | None = None
    api_keys: str | None = None
    rate: float = 0.0  # task submissions per second per API key; 0: no limit
    burst: float | None = None
    max_body_bytes: int = 1 << 20
    default_timeout_ms: float = 30_000.0
    max_timeout_ms: float = 600_000.0
    max_running: int = 10_000
    max_kept: int = 100_000
    public_url: str | None = None  # base URL written into Agent Cards (default: the request's)
    registry_ttl_s: float = 1.0
    progress: Literal["async", "all", "none"] = "async"  # which tasks get the router's dispatched/retried notices (GatewayLink)
    idempotency_journal: str | None = ""  # "": next to the key file (KEY.idempotency); None: memory only


class Problem(msgspec.Struct, frozen=True):
    status: int
    code: str
    detail: str


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.identity = Identity.load_or_create(Path(config.key_file))
        self.store = TaskStore(config.max_running, config.max_kept)
        self.link = GatewayLink(config.router_url, self.identity, self.store, config.gateway_id, progress=config.progress, router_key=config.router_key)
        self.view = RouterView(config.router_url, config.registry_ttl_s)
        self.link.on_registered = self.view.invalidate  # a reconnection may find another router: its registry, not the cached one
        self.keys = ApiKeys(config.api_keys)
        self.rates = KeyRates(config.rate, config.burst)
        journal = config.key_file + ".idempotency" if config.idempotency_journal == "" else config.idempotency_journal
        self.journal = IdempotencyJournal(journal, config.max_kept)

    async def start(self) -> None:
        await self.link.start()
        log.info("gateway %s (%s) connecting to %s", self.link.peer_id, self.identity.public_key_text, self.config.router_url)

    async def stop(self) -> None:
        await self.link.close()
        await self.view.close()

    def admit(self, principal: Principal) -> bool:
        return self.rates.admit(principal.name, time.monotonic())

    def accept(
        self,
        principal: Principal,
        method: str,
        payload: Raw,
        timeout_ms: float | None,
        idempotency_key: str | None = None,
        digest: bytes | None = None,
        context_id: str = "",
        watchable: bool = True,
        soon: bool = False,
    ) -> tuple[GatewayTask | None, Problem | None, bool]:
        """Take a task in and track it. Returns (task, None, is_new) or (None, problem, False).

        A new task is tracked at once; the caller then awaits ``link.send(task)``, or with
        ``soon`` calls ``link.send_soon(task)``, which arms its local deadline.
        ``watchable``: its caller gets the task id before the outcome (respond-async, A2A
        streaming), so someone may watch its events: it asks the router for progress notices.

        With an Idempotency-Key the task id is derived from the caller's key name and
        the Idempotency-Key, so the router (which keeps each outcome for its replay
        window) answers a repeat with the first outcome, even after a gateway restart.
        """
        if not principal.may(method):
            return None, Problem(403, FORBIDDEN, f"this API key may not submit {method!r}"), False
        timeout = self.config.default_timeout_ms if timeout_ms is None else timeout_ms
        if timeout > self.config.max_timeout_ms:
            return None, Problem(422, errors.INVALID_MESSAGE, f"timeout_ms is over the limit of {self.config.max_timeout_ms:g}"), False
        first: bytes | None = None  # the digest this Idempotency-Key was first used with, if known
        if idempotency_key is not None:
            if not IDEMPOTENCY_KEY.match(idempotency_key):
                return None, Problem(422, errors.INVALID_MESSAGE, "Idempotency-Key must be 1-96 characters from A-Z a-z 0-9 . _ : @ / + = -"), False
            owner_tag = hashlib.sha256(principal.name.encode()).hexdigest()[:8]
            task_id = f"idem:{owner_tag}:{idempotency_key}"
            existing = self.store.get(task_id)
            first = existing.digest if existing is not None else self.journal.digest_of(task_id)
            if (first is not None and first != digest) or (existing is not None and existing.method != method):
                return None, Problem(422, IDEMPOTENCY_CONFLICT, "this Idempotency-Key was used with a different request"), False
            if existing is not None:
                return existing, None, False
        else:
            task_id = self.link.session.new_id()
        if not self.link.connected:
            return None, Problem(503, NOT_CONNECTED, "the gateway is not connected to the router; try again shortly"), False
        if self.store.full:
            return None, Problem(503, errors.OVERLOADED, f"{self.store.max_running} tasks are already running here"), False
        task = GatewayTask(task_id, method, payload, timeout, principal.name, digest, context_id, watchable)
        if idempotency_key is not None and digest is not None and first is None:  # new key: write it down
            self.journal.record(task_id, digest)
        self.link.track(task, deadline=not soon)
        return task, None, True
