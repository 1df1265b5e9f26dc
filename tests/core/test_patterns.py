"""Id and Method patterns are checked after decoding (aicp.messages._patterns_hold), not by msgspec.

The wire classes declare ``Id`` and ``Method`` fields without their pattern; what is
refused, and with which error, must be what decoding with the patterns declared gave.
Differential: ``decode_body``/``decode_frame`` against the strict twins' decoders on bodies
and envelopes whose ids and methods are drawn to break the patterns in every way.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicp import errors
from aicp.messages import (
    _BODY_CLASSES,
    ID_PATTERN,
    METHOD_PATTERN,
    Frame,
    _decode_error,
    _strict_body_decoder,
    _strict_frame_decoder,
    _strict_twin,
    decode_body,
    decode_frame,
    seal_raw,
)
from aicp.signing import Identity

KEY = Identity(bytes([7]) * 32)

#: The fields that carried a pattern before (read off the former declarations), per class.
DECLARED = {
    "Challenge": ({"id", "sender"}, set()),
    "Register": ({"id", "sender"}, {"capabilities"}),
    "RegisterAck": ({"id", "sender", "ref", "peer"}, set()),
    "Heartbeat": ({"id", "sender"}, set()),
    "Task": ({"id", "sender"}, {"method"}),
    "Result": ({"id", "sender", "task_id", "requester"}, {"method"}),
    "Error": ({"id", "sender", "ref", "task_id"}, {"method"}),
    "Progress": ({"id", "sender", "task_id", "agent"}, {"method"}),
    "Deregister": ({"id", "sender"}, set()),
    "Goaway": ({"id", "sender"}, set()),
}


def test_the_strict_twins_declare_the_patterns_where_they_were() -> None:
    for cls in (*_BODY_CLASSES, Frame):
        twin = _strict_twin(cls)
        assert [f.name for f in msgspec.structs.fields(twin)] == [f.name for f in msgspec.structs.fields(cls)]
        ids, methods = DECLARED.get(cls.__name__, ({"sender"}, set()))
        for f in msgspec.structs.fields(twin):
            text = str(f.type)
            assert (repr(ID_PATTERN) in text) == (f.name in ids), (cls.__name__, f.name, text)
            assert (repr(METHOD_PATTERN) in text) == (f.name in methods), (cls.__name__, f.name, text)


def outcome(fn: Any, strict: Any, raw: bytes) -> tuple[str, str]:
    """("ok", the value re-encoded) or (code, message): what ``fn`` made of ``raw``, and what the strict decoder did."""
    try:
        got = ("ok", msgspec.json.encode(fn(raw)).decode())
    except errors.DecodeError as exc:
        got = (exc.code, exc.message)
    try:
        want = ("ok", msgspec.json.encode(strict(raw)).decode())
    except (msgspec.DecodeError, ValueError) as exc:
        err = _decode_error(exc)
        want = (err.code, err.message)
    assert got == want, raw
    return got


#: Ids and methods: valid ones, and ones that break a pattern anywhere (first character, a
#: trailing newline, a space, non-ASCII, empty, too long), or another type.
TEXT = st.one_of(
    st.sampled_from(["t-1", "a.b:c@d/e+f=g-h_9", "bench.synthetic", "_x", ".x", "-x", "x\n", "x\n\n", "x y", "é", "", "a" * 129, "a" * 128, "x\r"]),
    st.text(alphabet=st.sampled_from("aZ09._:@/+=-\n é"), max_size=6),
)
VALUE = st.one_of(TEXT, st.none(), st.integers(0, 3), st.lists(TEXT, max_size=3))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["task", "result", "error", "progress", "register", "register-ack", "heartbeat"]),
       values=st.dictionaries(st.sampled_from(["id", "sender", "method", "task_id", "requester", "ref", "agent", "peer", "capabilities"]), VALUE, max_size=4),
       extra=st.booleans())
def test_a_body_decodes_as_with_the_patterns_declared(kind: str, values: dict[str, Any], extra: bool) -> None:
    doc: dict[str, Any] = {"type": kind, "v": "1.1", "id": "m-1", "sender": "s1", "ts": 1.0}
    doc.update({
        "task": {"method": "echo", "payload": {}}, "result": {"task_id": "t-1", "requester": "c1", "method": "echo", "payload": 1},
        "error": {"code": "x"}, "progress": {"task_id": "t-1", "method": "echo", "state": "dispatched", "agent": "a1", "attempt": 1},
        "register": {"nonce": "n" * 16, "role": "agent", "key": "k", "capabilities": ["echo"]},
        "register-ack": {"ref": "r", "peer": "p", "role": "agent", "heartbeat_s": 1.0, "lease_s": 3.0}, "heartbeat": {},
    }[kind])
    for name, value in values.items():
        if name in doc or name in ("ref", "task_id", "method"):
            doc[name] = value
    if extra:
        doc["zz"] = 1  # a second fault after the fields (unknown field): which one is named must not change
    outcome(decode_body, _strict_body_decoder.decode, msgspec.json.encode(doc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sender=st.one_of(TEXT, st.integers(0, 3)), extra=st.booleans())
def test_an_envelope_decodes_as_with_the_pattern_declared(sender: Any, extra: bool) -> None:
    frame = msgspec.json.decode(seal_raw(KEY, "s1", b'{"a":1}'))
    frame["sender"] = sender
    if extra:
        frame["zz"] = 1
    outcome(decode_frame, _strict_frame_decoder.decode, msgspec.json.encode(frame))


@pytest.mark.parametrize("field, value", [("id", "x\n\n"), ("sender", "a b"), ("method", ".echo"), ("task_id", "é"), ("requester", "")])
def test_a_broken_pattern_is_invalid_message_naming_the_field(field: str, value: str) -> None:
    doc = {"type": "result", "v": "1.1", "id": "m-1", "sender": "s1", "ts": 1.0, "task_id": "t-1", "requester": "c1", "method": "echo", "payload": 1}
    doc[field] = value
    with pytest.raises(errors.DecodeError) as info:
        decode_body(msgspec.json.encode(doc))
    assert info.value.code == errors.INVALID_MESSAGE and f"$.{field}" in info.value.message


@pytest.mark.parametrize("field,value", [("sender", "c1\n"), ("id", "m-1\n"), ("method", "echo\n")])
def test_a_trailing_newline_breaks_an_id_or_a_method(field: str, value: str) -> None:
    """docs/PROTOCOL.md allows only its characters; a regex ending in ``$`` let a final newline through."""
    doc: dict[str, Any] = {"type": "task", "v": "1.1", "id": "m-1", "sender": "c1", "ts": 1.0, "method": "echo", "payload": {}}
    decode_body(msgspec.json.encode(doc))  # the frame is fine without the newline
    doc[field] = value
    with pytest.raises(errors.DecodeError) as refused:
        decode_body(msgspec.json.encode(doc))
    assert refused.value.code == errors.INVALID_MESSAGE


def test_router_ids_and_idempotency_keys_refuse_a_trailing_newline() -> None:
    from aicp.gateway.core import IDEMPOTENCY_KEY
    from aicp.live.cluster import ROUTER_ID

    assert ROUTER_ID.match("r1") and not ROUTER_ID.match("r1\n")
    assert IDEMPOTENCY_KEY.match("order-42") and not IDEMPOTENCY_KEY.match("order-42\n")
