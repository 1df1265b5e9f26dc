"""Wire messages: a signed envelope around a tagged union of message bodies.

A frame on the wire is one JSON object::

    {"sender": "...", "key": "ed25519:...", "sig": "<base64>", "body": {...}}

``body`` is kept as ``msgspec.Raw``: its exact bytes are what the signature
covers, and the router forwards the whole frame without re-encoding it. A
receiver decodes the envelope first, verifies, and only then decodes ``body``.
See docs/PROTOCOL.md for every field.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from aicp import errors
from aicp.signing import Identity, encode_signature

#: The protocol version every body carries in ``v``: a string, as JSON-RPC's ``"jsonrpc": "2.0"``.
#: 1.0 sent the integer ``1``; 1.1 changed wire behaviour (see docs/PROTOCOL.md, "Changes from 1.0").
PROTOCOL_VERSION: Final = "1.1"
Version = Annotated[str, Meta(min_length=1, max_length=16)]
MAX_FRAME_BYTES: Final = 1 << 20

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+=-]+$")]
Method = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")]
Timestamp = Annotated[float, Meta(ge=0.0, le=1.0e12)]
Text = Annotated[str, Meta(max_length=4096)]
KeyText = Annotated[str, Meta(min_length=1, max_length=128)]
SigText = Annotated[str, Meta(min_length=1, max_length=128)]
Nonce = Annotated[str, Meta(min_length=16, max_length=128)]
Seconds = Annotated[float, Meta(gt=0.0, le=1.0e6)]
Millis = Annotated[float, Meta(gt=0.0, le=1.0e9)]
Count = Annotated[int, Meta(ge=0, le=1_000_000)]

#: Role of a registered peer.
Role = Literal["agent", "controller"]


class Frame(Struct, forbid_unknown_fields=True, frozen=True):
    """The signed envelope. Only ``sender``, ``key`` and ``sig`` are read before verifying."""

    sender: Id
    key: KeyText
    sig: SigText
    body: Raw


class Body(Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Fields every message body carries."""

    v: Version
    id: Id
    sender: Id
    ts: Timestamp


class Challenge(Body, tag="challenge"):
    """Router → peer, first frame on every connection: sign ``nonce`` to register."""

    nonce: Nonce
    heartbeat_s: Seconds
    lease_s: Seconds
    window_s: Seconds


class Register(Body, tag="register"):
    """Peer → router: proves possession of ``key`` by signing the connection's nonce."""

    nonce: Nonce
    role: Role
    key: KeyText
    capabilities: Annotated[list[Method], Meta(max_length=256)] = []
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1
    progress: bool = False  # send me ``progress`` notices for my tasks (dispatched, retried)
    #: controllers only: the client made this id up for this run; the router may free the id
    #: ``window_s`` after the peer left and its last task ended (docs/PROTOCOL.md §4.4)
    ephemeral: bool = False


class RegisterAck(Body, tag="register-ack"):
    """Router → peer: registration accepted."""

    ref: Id
    peer: Id
    role: Role
    heartbeat_s: Seconds
    lease_s: Seconds


class Heartbeat(Body, tag="heartbeat"):
    """Peer → router: renews the lease. ``load`` is the agent's own count of running tasks."""

    load: Count = 0


class Task(Body, tag="task"):
    """Controller → router → agent (forwarded verbatim)."""

    method: Method
    payload: Raw
    timeout_ms: Millis | None = None
    #: ``progress`` notices for this task: true asks for them, false declines them; omitted: as the requester registered
    progress: bool | None = None


class Result(Body, tag="result"):
    """Agent → router → requester (forwarded verbatim). ``ok=False`` is a handler failure.

    ``requester`` and ``task_id`` are the task's ``sender`` and ``id``: together they name it.
    """

    task_id: Id
    requester: Id
    method: Method
    payload: Raw
    ok: bool = True
    reason: Text = ""
    service_ms: Annotated[float, Meta(ge=0.0, le=1.0e9)] | None = None  # the agent's own handler time (traces separate it from the stack's)


class Error(Body, tag="error"):
    """Router → peer: a refusal or a task's error outcome. ``ref`` names the message refused."""

    code: Annotated[str, Meta(max_length=64)]
    message: Text = ""
    ref: Id | None = None
    task_id: Id | None = None
    method: Method | None = None


class Progress(Body, tag="progress"):
    """Router → requester, for a task that asked (``Task.progress``, else the registration's ``progress``): its task went to ``agent`` (attempt 1) or again (retried)."""

    task_id: Id
    method: Method
    state: Literal["dispatched", "retried"]
    agent: Id
    attempt: Annotated[int, Meta(ge=1, le=1_000)]


class Deregister(Body, tag="deregister"):
    """Peer → router: leave cleanly; in-flight tasks fail over at once."""

    reason: Text = ""


class Goaway(Body, tag="goaway"):
    """Router → peer: the router is draining; send no new work, finish within ``drain_s``."""

    drain_s: Annotated[float, Meta(ge=0.0, le=1.0e6)]
    reason: Text = ""


AnyBody = Challenge | Register | RegisterAck | Heartbeat | Task | Result | Error | Progress | Deregister | Goaway

_frame_decoder: Final = msgspec.json.Decoder(Frame)
_CURRENT_VERSION_JSON: Final = b'"' + PROTOCOL_VERSION.encode() + b'"'
_body_decoder: Final = msgspec.json.Decoder(AnyBody)
_encoder: Final = msgspec.json.Encoder()

#: Integers on the wire must fit in 64 bits (signed or unsigned), as in msgspec, Go and serde.
INT_MIN: Final = -(1 << 63)
INT_MAX: Final = (1 << 64) - 1


class _Versioned(Struct):
    """Just the version of a body that failed to decode, to name the real problem (any JSON type)."""

    v: Raw = Raw(_CURRENT_VERSION_JSON)


_version_decoder: Final = msgspec.json.Decoder(_Versioned)


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    if len(dict(pairs)) != len(pairs):
        raise ValueError("duplicate key in a JSON object")


def _bounded_int(text: str) -> int:
    value = int(text) if len(text) <= 20 else INT_MAX + 1  # longer is out of range: skip the parse
    if value < INT_MIN or value > INT_MAX:
        raise ValueError("integer outside the 64-bit range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number overflows a double")
    return value


def _no_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


# msgspec decodes duplicate keys (last wins) and skips over a Raw value without
# looking at its numbers or its UTF-8. Another parser (first wins, or one that
# overflows differently) could then read a signed frame differently from us: a
# confused deputy. So every frame is also run once through the standard
# library's C scanner with these hooks, which see every object and number.
_strict_decoder: Final = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
)


_any_decoder: Final = msgspec.json.Decoder()

#: Frames nested deeper than this take the exact path, where the recursion limit decides as before.
_FAST_MAX_OPENINGS: Final = 256
#: Maps every digit to b"0" and every other byte to b".": a run of 19 zeros is a number that may be out of range.
_DIGIT_RUNS: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x2E for i in range(256))
_LONG_NUMBER: Final = b"0" * 19


def _proven_strict(data: bytes) -> bool:
    """C-speed proof that a frame is strict; False means "not proven", never "refused".

    msgspec's untyped decode refuses invalid UTF-8, NaN, Infinity and numbers that
    overflow a double. An integer outside the 64-bit range needs 19 digits or more, so
    frames with such a run are not proven here. Duplicate keys are what msgspec hides
    (last wins), so they are counted: each object member has one ``:`` outside strings,
    and msgspec writes every ``:`` inside a string as it is. Re-encoding the decoded
    value therefore gives as many ``:`` as the frame has exactly when no key was lost,
    unless a string spells a colon as an escape (``\\u003a``): such frames are not proven.
    """
    if b"\\u003" in data or _LONG_NUMBER in data.translate(_DIGIT_RUNS) or data.count(b"[") + data.count(b"{") > _FAST_MAX_OPENINGS:
        return False
    try:
        return data.count(b":") == _encoder.encode(_any_decoder.decode(data)).count(b":")
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):  # ValidationError is a ValueError
        return False


def check_strict(data: bytes | str) -> None:
    """Raise ``DecodeError(malformed)`` unless ``data`` is JSON every parser reads the same way.

    Refused: invalid UTF-8 (encoded surrogates too), duplicate keys in any object,
    numbers that overflow a double, integers outside the 64-bit range, NaN and
    Infinity, and nesting deeper than the interpreter's recursion limit.

    Most frames are proven strict by one C parse and re-encode (``_proven_strict``); any
    other frame, and so every refusal, goes through the standard library's scanner with the hooks
    above, which alone decides what is refused and why.
    """
    if isinstance(data, bytes) and _proven_strict(data):
        return
    try:
        text = data if isinstance(data, str) else data.decode("utf-8")
        _strict_decoder.decode(text)
    except (RecursionError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise errors.DecodeError(errors.MALFORMED, str(exc) or type(exc).__name__) from None


def _decode_error(exc: BaseException) -> errors.DecodeError:
    if isinstance(exc, msgspec.ValidationError):
        return errors.DecodeError(errors.INVALID_MESSAGE, str(exc))
    return errors.DecodeError(errors.MALFORMED, str(exc) or type(exc).__name__)


def decode_frame(data: bytes | str) -> Frame:
    """Decode the envelope, and check the whole frame is strict JSON. Raises ``DecodeError`` and nothing else."""
    try:
        frame = _frame_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise _decode_error(exc) from None
    check_strict(data)
    return frame


def decode_body(raw: bytes | Raw | memoryview) -> AnyBody:
    """Decode a verified body. Raises ``DecodeError`` and nothing else.

    The version is checked first: a body from another protocol version is
    ``unsupported-version`` even when its shape is unknown to this one.
    """
    try:
        body = _body_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        try:
            version_json = bytes(_version_decoder.decode(raw).v)
            version = msgspec.json.decode(version_json)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError):
            version_json, version = _CURRENT_VERSION_JSON, PROTOCOL_VERSION
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            raise _unsupported(version_json.decode("utf-8", "replace")) from None
        raise _decode_error(exc) from None
    if body.v != PROTOCOL_VERSION:
        raise _unsupported(encode(body.v).decode())
    return body


def _unsupported(version: str) -> errors.DecodeError:
    return errors.DecodeError(errors.UNSUPPORTED_VERSION, f"protocol version {version[:32]} is not supported: this side speaks \"{PROTOCOL_VERSION}\"")


def encode(obj: object) -> bytes:
    """Encode any msgspec-encodable value as compact JSON."""
    return _encoder.encode(obj)


def payload(obj: object) -> Raw:
    """Wrap a JSON-encodable value as a message payload."""
    return Raw(_encoder.encode(obj))


def seal(identity: Identity, sender: str, body: Body) -> bytes:
    """Encode ``body``, sign its exact bytes, and wrap them in a frame."""
    raw = _encoder.encode(body)
    return seal_raw(identity, sender, raw)


def seal_raw(identity: Identity, sender: str, raw_body: bytes) -> bytes:
    """Sign already-encoded body bytes and wrap them in a frame, byte for byte."""
    frame = Frame(sender=sender, key=identity.public_key_text, sig=encode_signature(identity.sign(raw_body)), body=Raw(raw_body))
    return _encoder.encode(frame)
