"""Hypothesis fuzzing of the frame decoder, the verifier and RouterProtocol.frame_received.

- any bytes either decode to a valid frame or raise ``DecodeError``; the verify
  path raises ``ProtocolError`` and nothing else;
- ``frame_received`` never raises, whatever arrives, before or after registration;
- a differential test against the standard library's json: a frame we accept
  reads the same to msgspec, to stdlib json with last-wins and with first-wins
  duplicate keys; duplicate keys, non-finite and out-of-range numbers are refused.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicp import errors
from aicp.inprocess import InProcessHub
from aicp.messages import INT_MAX, INT_MIN, _proven_strict, _strict_decoder, check_strict, decode_body, decode_frame, seal_raw
from aicp.peer import PeerSession
from aicp.protocol import Close, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity, check_public_key, decode_public_key, decode_signature, verify

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_000_000.0
AGENT, CTL, FUZZER, PROBE = (Identity(bytes([n]) * 32) for n in (1, 2, 3, 4))


def good_frame() -> bytes:
    body = msgspec.json.encode(
        {"type": "task", "v": "1.1", "id": "t-1", "sender": "f1", "ts": T0, "method": "echo", "payload": {"a": [1, 2.5, "x"]}}
    )
    return seal_raw(FUZZER, "f1", body)


GOOD = good_frame()


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """A valid frame with a few bytes replaced, inserted, deleted or the tail cut off."""

    @st.composite
    def _mutate(draw: st.DrawFn) -> bytes:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "dup"]))
            i = draw(st.integers(0, max(len(buf) - 1, 0)))
            if not buf:
                break
            if op == "flip":
                buf[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "set":
                buf[i] = draw(st.sampled_from(b'{}[]",:0123456789-+.eE\\ \x00\xff\xc3a'))
            elif op == "insert":
                buf[i:i] = draw(st.sampled_from([b'"a":1,', b",", b"[", b"{", b"1e400", b"NaN", b"\xed\xa0\x80", b"\\u0000"]))
            elif op == "delete":
                del buf[i]
            elif op == "cut":
                del buf[i:]
            else:
                j = draw(st.integers(i, min(len(buf), i + 24)))
                buf[j:j] = buf[i:j]
        return bytes(buf)

    return _mutate()


ANY_BYTES = st.one_of(st.binary(max_size=512), mutated(GOOD))


def verify_like_the_router(data: bytes) -> Any:
    """The handshake path: decode, key, signature, body. Only ProtocolError may escape."""
    frame = decode_frame(data)
    key = decode_public_key(frame.key)
    check_public_key(key)
    verify(key, frame.body, decode_signature(frame.sig))
    return decode_body(frame.body)


@FUZZ
@given(ANY_BYTES)
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except errors.DecodeError as exc:
        assert exc.code in (errors.MALFORMED, errors.INVALID_MESSAGE)
        return
    # Accepted: the envelope re-reads the same with the standard library.
    doc = json.loads(data)
    assert (doc["sender"], doc["key"], doc["sig"]) == (frame.sender, frame.key, frame.sig)


@FUZZ
@given(ANY_BYTES)
def test_the_verify_path_raises_only_protocol_errors(data: bytes) -> None:
    try:
        verify_like_the_router(data)
    except errors.ProtocolError as exc:
        assert exc.code in errors.ALL_CODES


@FUZZ
@given(st.binary(max_size=300))
def test_bytes_signed_by_a_valid_key_decode_or_raise_decode_error(body: bytes) -> None:
    """Signed garbage gets through the signature check; the body decoder must still hold."""
    try:
        verify_like_the_router(seal_raw(FUZZER, "f1", body))
    except errors.ProtocolError as exc:
        assert exc.code in errors.ALL_CODES


# ----------------------------------------------------------------- frame_received never raises
def world() -> tuple[RouterProtocol, InProcessHub, int, int]:
    proto = RouterProtocol(Identity(b"\x09" * 32), Router(RouterConfig()), ProtocolConfig(window_s=60.0), nonce_source=lambda: "n" * 32)
    hub = InProcessHub(proto, now=T0)
    hub.connect(PeerSession(AGENT, "a1", "agent", ["echo"]), handler=lambda task: 1)
    ctl = hub.connect(PeerSession(CTL, "c1", "controller"))
    stranger = hub.connect(PeerSession(FUZZER, "f1", "controller"), register=False)
    return proto, hub, ctl.conn, stranger.conn


def still_serving(hub: InProcessHub, proto: RouterProtocol) -> None:
    """A fresh controller still gets its task done (c1 may have deregistered itself)."""
    ctl = hub.connect(PeerSession(PROBE, "probe", "controller"))
    tid = ctl.submit("echo", 0)
    hub.run_until_idle()
    assert ctl.outcome_count.get(tid) == 1, proto.rejections


def feed(proto: RouterProtocol, conn: int, data: bytes | str, now: float) -> None:
    out = proto.frame_received(conn, data, now)
    assert all(isinstance(o, (Send, Close)) for o in out)


@FUZZ
@given(st.lists(ANY_BYTES, min_size=1, max_size=4), st.booleans())
def test_frame_received_never_raises(frames: list[bytes], registered: bool) -> None:
    proto, hub, ctl, stranger = world()
    for data in frames:
        feed(proto, ctl if registered else stranger, data, hub.now)
    proto.frame_received(10_000, frames[0], hub.now)  # an unknown connection is ignored
    still_serving(hub, proto)


JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8)
FIELDS = ["type", "v", "id", "sender", "ts", "method", "payload", "timeout_ms", "task_id", "requester", "ok", "reason", "load", "nonce", "role", "key", "code"]


@st.composite
def signed_bodies(draw: st.DrawFn) -> bytes:
    """Bodies near the real shapes, validly signed by the registered controller c1."""
    doc: dict[str, Any] = {"type": draw(st.sampled_from(["task", "result", "heartbeat", "register", "deregister", "error", "x"])), "v": "1.1"}
    doc.update({"id": draw(st.sampled_from(["t1", "t2", ""])), "sender": "c1", "ts": T0})
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        doc[name] = draw(JSON_VALUE)
    if draw(st.booleans()):
        doc.update(method="echo", payload=draw(JSON_VALUE))
    return seal_raw(CTL, "c1", msgspec.json.encode(doc))


@FUZZ
@given(st.lists(signed_bodies(), min_size=1, max_size=4))
def test_frame_received_never_raises_on_signed_bodies(frames: list[bytes]) -> None:
    proto, hub, ctl, _ = world()
    for data in frames:
        feed(proto, ctl, data, hub.now)
        hub.run_until_idle()
    still_serving(hub, proto)


# ----------------------------------------------------------------- differential against stdlib json
NUMBERS = st.one_of(
    st.sampled_from(
        ["1e400", "-1e400", "1E309", "1e308", "1e-400", "-0", "-0.0", "0", "NaN", "Infinity", "-Infinity",
         "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
         "9007199254740993", "123456789012345678901234567890", "1" + "0" * 30, "01", "1.", ".5", "+1", "0x10"]
    ),
    st.integers(-(2**66), 2**66).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
STRINGS = st.one_of(st.text(max_size=6).map(json.dumps), st.sampled_from(['"a"', '"b"', '"\\u00e9"', '"\\ud83d\\ude00"']))


def json_texts() -> st.SearchStrategy[str]:
    """JSON-ish text with small key alphabets, so duplicate keys are common."""
    scalars = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false", "null"]))

    def containers(kids: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        arrays = st.lists(kids, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        members = st.tuples(st.sampled_from(['"a"', '"b"', '"c"', '"\\u0061"']), kids).map(lambda kv: kv[0] + ":" + kv[1])
        objects = st.lists(members, max_size=4).map(lambda xs: "{" + ",".join(xs) + "}")
        return arrays | objects

    return st.recursive(scalars, containers, max_leaves=12)


def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def has_duplicates(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


def numbers_in(value: Any) -> list[int | float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in numbers_in(item)]


def same(a: Any, b: Any) -> bool:
    """Equal with the same types (so 1 and 1.0 differ) and the same sign of zero."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def accepted(text: str) -> Any:
    """What the router accepts inside a frame: msgspec skips it as Raw (as it does a body or
    payload) and the strict check passes. Anything accepted must then fully decode with msgspec,
    so every peer can read the payload it is handed."""
    data = text.encode()
    try:
        msgspec.json.decode(data, type=msgspec.Raw)
    except (msgspec.DecodeError, RecursionError):
        return None, False
    try:
        check_strict(data)
    except errors.DecodeError as exc:
        assert exc.code == errors.MALFORMED
        return None, False
    return msgspec.json.decode(data), True


@settings(max_examples=600, deadline=None)
@given(json_texts())
def test_differential_against_stdlib_json(text: str) -> None:
    ours, ok = accepted(text)
    try:
        last = json.loads(text)
        first = json.loads(text, object_pairs_hook=first_wins)
        std_ok = True
    except ValueError:
        std_ok = False
    if not ok:
        if std_ok:
            # We refuse valid stdlib JSON only for the documented reasons.
            numbers = numbers_in(last)
            assert (
                has_duplicates(text)
                or any(isinstance(n, float) and not math.isfinite(n) for n in numbers)
                or any(isinstance(n, int) and not INT_MIN <= n <= INT_MAX for n in numbers)
            ), text
        return
    # Accepted: stdlib accepts too, and every reading agrees, value and type.
    assert std_ok, text
    assert not has_duplicates(text)
    assert same(ours, last) and same(last, first), text
    for n in numbers_in(ours):
        assert math.isfinite(n) and (not isinstance(n, int) or INT_MIN <= n <= INT_MAX)


@given(st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "18446744073709551616", "-9223372036854775809"]), st.sampled_from(["{}", "[]"]))
def test_edge_numbers_are_refused_anywhere_in_a_document(number: str, shell: str) -> None:
    text = '{"a":[1,{"b":' + number + "}]}" if shell == "{}" else "[0,[" + number + "]]"
    assert accepted(text) == (None, False)


def test_stdlib_and_msgspec_really_disagree_on_what_we_refuse() -> None:
    """Why the check exists: without it, these inputs mean different things to different parsers."""
    assert msgspec.json.decode(b'{"a":1,"a":2}') == {"a": 2}
    assert json.loads('{"a":1,"a":2}', object_pairs_hook=first_wins) == {"a": 1}
    assert json.loads("1e400") == math.inf  # stdlib: infinity; msgspec: refuses
    assert msgspec.json.decode(b"18446744073709551616") == 2**64  # fine here, not in Go or serde
    for text in ['{"a":1,"a":2}', "1e400", "18446744073709551616", "NaN"]:
        assert accepted(text) == (None, False)


TEXT_WITH_SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.sampled_from('{}[]":,ab1'), max_size=64)


@FUZZ
@given(st.one_of(TEXT_WITH_SURROGATES, mutated(GOOD).map(lambda b: b.decode("utf-8", "replace"))))
def test_text_frames_never_raise_even_with_lone_surrogates(text: str) -> None:
    """Drivers may hand over ``str``; one with lone surrogates cannot be UTF-8 and must be malformed."""
    proto, hub, ctl, stranger = world()
    feed(proto, ctl, text, hub.now)
    feed(proto, stranger, text, hub.now)
    session = PeerSession(CTL, "c1", "controller")
    try:
        session.receive(text, hub.now)
    except errors.ProtocolError:
        pass
    still_serving(hub, proto)


def test_a_lone_surrogate_in_a_text_frame_is_malformed() -> None:
    proto, hub, ctl, _ = world()
    frame = GOOD.decode().replace('"x"', '"\ud800"')
    before = dict(proto.rejections)
    out = proto.frame_received(ctl, frame, hub.now)
    assert [o for o in out if isinstance(o, Close)] == []
    assert proto.rejections.get(errors.MALFORMED, 0) == before.get(errors.MALFORMED, 0) + 1


def colon_texts() -> st.SearchStrategy[str]:
    """JSON-ish text whose keys and strings hold colons, plainly or as escapes, with duplicate keys common."""
    keys = st.sampled_from(['"a"', '"a:"', '":"', '"::"', '"\\u003a"', '"\\u003A"', '"a\\u003a"', '"\\\\u003a"'])
    scalars = st.one_of(NUMBERS, keys, st.sampled_from(["true", "null", '"x:y"']))

    def containers(kids: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        arrays = st.lists(kids, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        members = st.tuples(keys, kids).map(lambda kv: kv[0] + ":" + kv[1])
        objects = st.lists(members, max_size=4).map(lambda xs: "{" + ",".join(xs) + "}")
        return arrays | objects

    return st.recursive(scalars, containers, max_leaves=12)


@settings(max_examples=600, deadline=None)
@given(st.one_of(json_texts(), colon_texts()))
def test_the_fast_strictness_proof_never_accepts_what_the_exact_check_refuses(text: str) -> None:
    """The one-parse proof (msgspec decode, re-encode, colon count) against the stdlib scanner with hooks: the oracle."""
    data = text.encode()
    if not _proven_strict(data):
        return
    _strict_decoder.decode(text)  # raises if the oracle refuses
    assert not has_duplicates(text)


@pytest.mark.parametrize(
    "text",
    ['{"a:":1,"a:":2}', '{":":":",":":1}', '{"a":{"b":1,"b":2}}', '[{"a":"x:y"},{"a":1,"a":1}]', '{"a":1,"\\u0061":2}',
     '{"\\u003a":1,":":2}', '{"a":18446744073709551616}', '{"a":-9223372036854775809}', '{"a":1e400}'],
)
def test_the_fast_strictness_proof_leaves_every_refusal_to_the_exact_check(text: str) -> None:
    assert not _proven_strict(text.encode())
    with pytest.raises(errors.DecodeError) as exc:
        check_strict(text.encode())
    assert exc.value.code == errors.MALFORMED


def test_the_fast_strictness_proof_accepts_an_ordinary_frame() -> None:
    assert _proven_strict(GOOD)


@pytest.mark.parametrize("arrays", [0, 100, 256])
def test_the_fast_strictness_proof_counts_both_openings_towards_its_bound(arrays: int) -> None:
    """Up to 256 openings, ``[`` and ``{`` together, are proven here; one more goes to the exact check."""
    objects = 256 - arrays
    text = "[" * arrays + '{"a":' * objects + "1" + "}" * objects + "]" * arrays
    assert _proven_strict(text.encode())
    assert not _proven_strict(("[" + text + "]").encode()) and not _proven_strict(('{"b":' + text + "}").encode())
