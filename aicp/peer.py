"""The agent's and controller's side of the protocol, sans I/O.

``PeerSession`` builds signed frames (register, heartbeat, task, result,
deregister) and checks every frame it receives before anything acts on it.
Drivers (the asyncio agent and controller clients, the in-process driver) feed
it bytes and ``now`` and act on the events it returns.

Keys: the router's key is pinned from the first challenge unless given up
front. A forwarded task or result is verified against the key in its envelope;
the router has already checked that this key is bound to the envelope's sender.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Final

import msgspec
from msgspec import Raw

from aicp import errors
from aicp.messages import (
    PROTOCOL_VERSION,
    AnyBody,
    Challenge,
    Deregister,
    Error,
    Goaway,
    Heartbeat,
    Progress,
    Register,
    RegisterAck,
    Result,
    Role,
    Task,
    decode_body,
    decode_frame,
    seal,
)
from aicp.signing import Identity, decode_public_key, decode_signature, verify


class Received(msgspec.Struct, frozen=True, gc=False):
    """A verified frame: its decoded body, the exact bytes, the signer's key and signature (text form), and the signed body bytes.

    ``sig`` and ``signed`` are the envelope's, as verified: whoever hands the signature on
    (the gateway, ``TaskResult``) takes them from here instead of decoding the frame again.
    """

    body: AnyBody
    frame: bytes
    key: str
    sig: str = ""
    signed: Raw = Raw(b"")


#: Decoded public keys a session keeps (``PeerSession.receive``); O(1) per frame to look one up.
KEY_CACHE: Final = 1024

CONNECTING: Final = "connecting"
REGISTERING: Final = "registering"
READY: Final = "ready"


class PeerSession:
    """One agent or controller identity talking to one router over one connection at a time."""

    def __init__(
        self,
        identity: Identity,
        peer_id: str,
        role: Role = "agent",
        capabilities: Iterable[str] = (),
        concurrency: int = 1,
        router_key: str | None = None,
        progress: bool = False,
        ephemeral: bool = False,
    ) -> None:
        self.identity = identity
        self.progress = progress  # ask the router for ``progress`` notices on our tasks
        #: a controller whose id was made up for this run: the router may free it once we are gone (PROTOCOL.md §4.4)
        self.ephemeral = ephemeral
        self.peer_id = peer_id
        self.role: Role = role
        self.capabilities = list(capabilities)
        self.concurrency = concurrency
        self.router_key = router_key
        self.router_id: str | None = None
        self.state = CONNECTING
        self.nonce: str | None = None
        self.heartbeat_s = 30.0
        self.lease_s = 90.0
        self._prefix = secrets.token_hex(6) + "-"
        self._seq = 0
        #: keys already decoded (text form -> raw), at most ``KEY_CACHE`` of them: a controller gets results
        #: signed by every agent it uses, round robin, so the last key alone missed on nearly every result
        self._keys: dict[str, bytes] = {}

    def new_id(self) -> str:
        self._seq += 1
        return self._prefix + str(self._seq)

    def connection_made(self) -> None:
        """A new transport: wait for its challenge."""
        self.state = CONNECTING
        self.nonce = None

    # ------------------------------------------------------------------ receiving
    def receive(self, data: bytes | str, now: float) -> Received:
        """Verify and decode one frame. Raises ``ProtocolError`` (never anything else) if it fails."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")  # lone surrogates then fail as malformed
        frame = decode_frame(data)
        key_raw = self._keys.get(frame.key)
        if key_raw is None:
            key_raw = decode_public_key(frame.key)
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()  # more signers than that: start over (O(1) amortised per frame)
            self._keys[frame.key] = key_raw
        from_router = self.router_id is not None and frame.sender == self.router_id
        if from_router or self.state == CONNECTING:
            if self.router_key is not None and frame.key != self.router_key:
                raise errors.VerifyError(errors.KEY_MISMATCH, "router frame signed by an unexpected key")
        verify(key_raw, frame.body, decode_signature(frame.sig))
        body = decode_body(frame.body)
        if body.sender != frame.sender:
            raise errors.VerifyError(errors.KEY_MISMATCH, "body sender differs from the envelope's")
        if isinstance(body, Challenge):
            if self.state != CONNECTING:
                raise errors.DecodeError(errors.INVALID_MESSAGE, "unexpected challenge")
            self.router_key = frame.key
            self.router_id = body.sender
            self.nonce = body.nonce
            self.heartbeat_s = body.heartbeat_s
            self.lease_s = body.lease_s
            self.state = REGISTERING
        elif isinstance(body, RegisterAck):
            if not from_router or body.peer != self.peer_id:
                raise errors.DecodeError(errors.INVALID_MESSAGE, "acknowledgement not for this peer")
            self.heartbeat_s = body.heartbeat_s
            self.lease_s = body.lease_s
            self.state = READY
        elif isinstance(body, (Error, Goaway, Progress)) and not from_router:
            raise errors.VerifyError(errors.KEY_MISMATCH, "only the router sends errors, goaways and progress notices")
        elif isinstance(body, Result) and body.requester != self.peer_id:
            raise errors.DecodeError(errors.INVALID_MESSAGE, "result for another requester")
        return Received(body, data, frame.key, frame.sig, frame.body)

    # ------------------------------------------------------------------ sending
    def register_frame(self, now: float) -> bytes:
        if self.nonce is None:
            raise errors.LocalError("no challenge received yet on this connection")
        body = Register(
            v=PROTOCOL_VERSION,
            id=self.new_id(),
            sender=self.peer_id,
            ts=now,
            nonce=self.nonce,
            role=self.role,
            key=self.identity.public_key_text,
            capabilities=self.capabilities if self.role == "agent" else [],
            concurrency=self.concurrency,
            progress=self.progress,
            ephemeral=self.ephemeral,
        )
        return seal(self.identity, self.peer_id, body)

    def heartbeat_frame(self, now: float, load: int = 0) -> bytes:
        return seal(self.identity, self.peer_id, Heartbeat(v=PROTOCOL_VERSION, id=self.new_id(), sender=self.peer_id, ts=now, load=load))

    def task_frame(
        self, method: str, payload: Raw, now: float, task_id: str | None = None, timeout_ms: float | None = None, progress: bool | None = None
    ) -> tuple[str, bytes]:
        """A signed task. ``progress``: ask (True) or decline (False) the router's notices for this one task; None: as registered."""
        tid = task_id or self.new_id()
        body = Task(v=PROTOCOL_VERSION, id=tid, sender=self.peer_id, ts=now, method=method, payload=payload, timeout_ms=timeout_ms, progress=progress)
        return tid, seal(self.identity, self.peer_id, body)

    def result_frame(self, task: Task, payload: Raw, now: float, ok: bool = True, reason: str = "", service_ms: float | None = None) -> bytes:
        body = Result(
            v=PROTOCOL_VERSION,
            id=self.new_id(),
            sender=self.peer_id,
            ts=now,
            task_id=task.id,
            requester=task.sender,
            method=task.method,
            payload=payload,
            ok=ok,
            reason=reason[:4096],
            service_ms=service_ms,
        )
        return seal(self.identity, self.peer_id, body)

    def deregister_frame(self, now: float, reason: str = "") -> bytes:
        return seal(self.identity, self.peer_id, Deregister(v=PROTOCOL_VERSION, id=self.new_id(), sender=self.peer_id, ts=now, reason=reason))
