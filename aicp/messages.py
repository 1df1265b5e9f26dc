"""Wire messages: a signed envelope around a tagged union of message bodies.

A frame on the wire is one JSON object::

    {"sender": "...", "key": "ed25519:...", "sig": "<base64>", "body": {...}}

``body`` is kept as ``msgspec.Raw``: its exact bytes are what the signature
covers, and the router forwards the whole frame without re-encoding it. A
receiver decodes the envelope first, verifies, and only then decodes ``body``.
See docs/PROTOCOL.md for every field.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from typing import Annotated, Any, Final, Literal, get_type_hints

import msgspec
from msgspec import Meta, Raw, Struct

from aicp import errors
from aicp.signing import Identity, encode_signature

#: The protocol version every body carries in ``v``: a string, as JSON-RPC's ``"jsonrpc": "2.0"``.
#: 1.0 sent the integer ``1``; 1.1 changed wire behaviour (see docs/PROTOCOL.md, "Changes from 1.0").
PROTOCOL_VERSION: Final = "1.1"
Version = Annotated[str, Meta(min_length=1, max_length=16)]
MAX_FRAME_BYTES: Final = 1 << 20

ID_PATTERN: Final = r"^[A-Za-z0-9._:@/+=-]+\Z"
METHOD_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z"
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=ID_PATTERN)]
Method = Annotated[str, Meta(min_length=1, max_length=128, pattern=METHOD_PATTERN)]
#: What the wire classes below declare for an ``Id`` and a ``Method`` field: the same type
#: without its pattern. msgspec runs a pattern through Python's ``re`` at about a
#: microsecond a field (a task body decoded in 2.2 µs with its three, 0.6 µs without), on
#: every frame in every role. ``decode_frame`` and ``decode_body`` check the patterns
#: themselves after decoding (``_patterns_hold``), and decode a frame that fails one again
#: with twins that declare them (``_strict_twin``): what is refused, and with which error,
#: is as before.
_IdText = Annotated[str, Meta(min_length=1, max_length=128)]
_MethodText = Annotated[str, Meta(min_length=1, max_length=128)]
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

    sender: _IdText
    key: KeyText
    sig: SigText
    body: Raw


class Body(Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Fields every message body carries."""

    v: Version
    id: _IdText
    sender: _IdText
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
    capabilities: Annotated[list[_MethodText], Meta(max_length=256)] = []
    concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1
    progress: bool = False  # send me ``progress`` notices for my tasks (dispatched, retried)
    #: controllers only: the client made this id up for this run; the router may free the id
    #: ``window_s`` after the peer left and its last task ended (docs/PROTOCOL.md §4.4)
    ephemeral: bool = False


class RegisterAck(Body, tag="register-ack"):
    """Router → peer: registration accepted."""

    ref: _IdText
    peer: _IdText
    role: Role
    heartbeat_s: Seconds
    lease_s: Seconds


class Heartbeat(Body, tag="heartbeat"):
    """Peer → router: renews the lease. ``load`` is the agent's own count of running tasks."""

    load: Count = 0


class Task(Body, tag="task"):
    """Controller → router → agent (forwarded verbatim)."""

    method: _MethodText
    payload: Raw
    timeout_ms: Millis | None = None
    #: ``progress`` notices for this task: true asks for them, false declines them; omitted: as the requester registered
    progress: bool | None = None


class Result(Body, tag="result"):
    """Agent → router → requester (forwarded verbatim). ``ok=False`` is a handler failure.

    ``requester`` and ``task_id`` are the task's ``sender`` and ``id``: together they name it.
    """

    task_id: _IdText
    requester: _IdText
    method: _MethodText
    payload: Raw
    ok: bool = True
    reason: Text = ""
    service_ms: Annotated[float, Meta(ge=0.0, le=1.0e9)] | None = None  # the agent's own handler time (traces separate it from the stack's)


class Error(Body, tag="error"):
    """Router → peer: a refusal or a task's error outcome. ``ref`` names the message refused."""

    code: Annotated[str, Meta(max_length=64)]
    message: Text = ""
    ref: _IdText | None = None
    task_id: _IdText | None = None
    method: _MethodText | None = None


class Progress(Body, tag="progress"):
    """Router → requester, for a task that asked (``Task.progress``, else the registration's ``progress``): its task went to ``agent`` (attempt 1) or again (retried)."""

    task_id: _IdText
    method: _MethodText
    state: Literal["dispatched", "retried"]
    agent: _IdText
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


def _strict_twin(cls: type[Struct]) -> type[Struct]:
    """``cls`` as msgspec sees it with ``Id`` and ``Method`` patterns: same name, tag, fields, defaults and options.

    Only decoded when ``_patterns_hold`` finds a pattern broken, to raise what decoding ``cls``
    with the patterns declared raised: the same error, naming the first broken field.
    """
    hints = get_type_hints(cls, globalns={**globals(), "_IdText": Id, "_MethodText": Method}, include_extras=True)
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(cls):
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name]))
    cfg = cls.__struct_config__
    return msgspec.defstruct(cls.__name__, fields, tag=cfg.tag, tag_field=cfg.tag_field, forbid_unknown_fields=cfg.forbid_unknown_fields,
                             omit_defaults=cfg.omit_defaults, frozen=cfg.frozen)


def _patterned_fields(cls: type[Struct], marker: str) -> tuple[str, ...]:
    """The fields of ``cls`` declared with ``marker`` (``_IdText`` or ``_MethodText``), alone, optional or in a list."""
    declared: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        declared.update(vars(klass).get("__annotations__", {}))  # strings: this module has postponed annotations
    return tuple(f.name for f in msgspec.structs.fields(cls) if marker in str(declared[f.name]))


_strict_frame_decoder: Final = msgspec.json.Decoder(_strict_twin(Frame))
_BODY_CLASSES: Final = (Challenge, Register, RegisterAck, Heartbeat, Task, Result, Error, Progress, Deregister, Goaway)
_strict_body_decoder: Final = msgspec.json.Decoder(functools.reduce(operator.or_, [_strict_twin(cls) for cls in _BODY_CLASSES]))
_id_search: Final = re.compile(ID_PATTERN).search  # what msgspec calls for a pattern: search (hence \Z, not "$", which also matches before a final newline)
_method_search: Final = re.compile(METHOD_PATTERN).search
#: For each body class, its fields with an ``Id`` pattern and those with a ``Method`` pattern.
_PATTERNED: Final[dict[type[Body], tuple[tuple[str, ...], tuple[str, ...]]]] = {cls: (_patterned_fields(cls, "_IdText"), _patterned_fields(cls, "_MethodText"))
                     for cls in _BODY_CLASSES}


def _patterns_hold(body: Body) -> bool:
    """True if every ``Id`` and ``Method`` field of ``body`` matches its pattern (None is no value to match).

    O(fields + capabilities); one ``re`` search per value, as msgspec did, without its per-field overhead.
    Tasks and results, nearly every frame, are checked field by field without the loop.
    """
    cls = type(body)
    if cls is Task:
        task: Task = body  # type: ignore[assignment]
        return _id_search(task.id) is not None and _id_search(task.sender) is not None and _method_search(task.method) is not None
    if cls is Result:
        res: Result = body  # type: ignore[assignment]
        return (_id_search(res.id) is not None and _id_search(res.sender) is not None and _id_search(res.task_id) is not None
                and _id_search(res.requester) is not None and _method_search(res.method) is not None)
    ids, methods = _PATTERNED[cls]
    for name in ids:
        value = getattr(body, name)
        if value is not None and _id_search(value) is None:
            return False
    for name in methods:
        value = getattr(body, name)
        if type(value) is list:
            for item in value:
                if _method_search(item) is None:
                    return False
        elif value is not None and _method_search(value) is None:
            return False
    return True
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
#: Maps every digit to b"0", both openings (``[`` and ``{``) to b"[" and every other byte to b".": a run of
#: 19 zeros is a number that may be out of range, and one count of b"[" counts the openings (one pass, not two over the frame).
_DIGIT_RUNS: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x5B if i in (0x5B, 0x7B) else 0x2E for i in range(256))
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
    if b"\\u003" in data:
        return False
    shape = data.translate(_DIGIT_RUNS)
    if _LONG_NUMBER in shape or shape.count(b"[") > _FAST_MAX_OPENINGS:
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


def _as_declared(strict: msgspec.json.Decoder[Any], data: bytes | str | Raw | memoryview, exc: BaseException) -> BaseException:
    """What decoding ``data`` with the patterns declared raised: the error of the first fault in
    the document, which may be a broken pattern before the fault the unpatterned decoder met."""
    try:
        strict.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as strict_exc:
        return strict_exc
    return exc  # not reached: the strict decoder refuses whatever the unpatterned one does


def decode_frame(data: bytes | str) -> Frame:
    """Decode the envelope, and check the whole frame is strict JSON. Raises ``DecodeError`` and nothing else."""
    try:
        frame = _frame_decoder.decode(data)
        if _id_search(frame.sender) is None:
            _strict_frame_decoder.decode(data)  # raises what the declared pattern raised (see _IdText)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        raise _decode_error(_as_declared(_strict_frame_decoder, data, exc)) from None
    check_strict(data)
    return frame


def decode_body(raw: bytes | Raw | memoryview) -> AnyBody:
    """Decode a verified body. Raises ``DecodeError`` and nothing else.

    The version is checked first: a body from another protocol version is
    ``unsupported-version`` even when its shape is unknown to this one.
    """
    try:
        body = _body_decoder.decode(raw)
        if not _patterns_hold(body):
            _strict_body_decoder.decode(raw)  # raises what the declared patterns raised (see _IdText)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as fast_exc:
        exc = _as_declared(_strict_body_decoder, raw, fast_exc)
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
