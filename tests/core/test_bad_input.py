"""Issue 6, bad input: every case a peer can send to the sans-I/O router, one test each.

Each test sends the bad frame through the in-process hub and checks four things:
the exact error code sent back, that the rejection was counted once (the dict
/metrics exports), that the router's state did not move, and that a healthy
controller/agent pair still completes a task afterwards.

Cases 5, 6, 9 and 25-27 (frame size, compression, UTF-8 at the WebSocket layer,
floods, slowloris, slow consumers) need a real socket and live in tests/live/.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import PROTOCOL_VERSION, Error, Result, Task, decode_body, decode_frame, seal_raw
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_POLICY, Close, Output, ProtocolConfig, RouterProtocol, Send, task_key
from aicp.router import Router, RouterConfig
from aicp.signing import CONTEXT, Identity, encode_public_key, encode_signature

WINDOW = 60.0
T0 = 1_000_000.0
L = 2**252 + 27742317777372353535851937790883648493  # the order of the Ed25519 base point

#: The eight small-order points, canonical encodings (libsodium's blocklist; CCTV ed25519 vectors).
SMALL_ORDER_KEYS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
]
#: Non-canonical encodings: y >= p, or x's sign bit set where x = 0.
NON_CANONICAL_KEYS = [
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, "negative zero"
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, sign bit set
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p (= 0)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1 (= 1, identity)
    "f7ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 10
]
#: A mixed-order key from "Taming the many EdDSAs" (ed25519-speccheck vector 6): a
#: prime-order point plus a torsion component. libsodium's verify accepts
#: signatures under it; registration must not.
MIXED_ORDER_KEY = "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d"


def ident(n: int) -> Identity:
    return Identity(bytes([n]) * 32)


def echo(task: Task) -> Any:
    return msgspec.json.decode(task.payload)


class TapHub(InProcessHub):
    """A hub that also keeps every output of the router, so tests can read refusals
    sent just before a close (the plain hub drops frames to a closed endpoint)."""

    def __init__(self, proto: RouterProtocol, now: float = T0) -> None:
        super().__init__(proto, now)
        self.outputs: list[Output] = []

    def _apply(self, outputs: list[Send | Close]) -> None:
        self.outputs.extend(outputs)
        super()._apply(outputs)


class World:
    """A router with one healthy agent (a1, ``echo``) and one controller (c1), plus attackers."""

    def __init__(self, verify: str = "every-hop") -> None:
        self.proto = RouterProtocol(
            ident(200), Router(RouterConfig()), ProtocolConfig(window_s=WINDOW, verify=verify)  # type: ignore[arg-type]
        )
        self.hub = TapHub(self.proto)
        self.agent = self.hub.connect(PeerSession(ident(1), "a1", "agent", ["echo"]), handler=echo)
        self.ctl = self.hub.connect(PeerSession(ident(2), "c1", "controller"))
        self.served = 0
        self._ids = 0
        self.assert_serving()

    @property
    def now(self) -> float:
        return self.hub.now

    def new_id(self) -> str:
        self._ids += 1
        return f"evil-{self._ids}"

    # -- peers
    def stranger(self) -> Endpoint:
        """A connection that got its challenge and has not registered."""
        return self.hub.connect(PeerSession(ident(66), "x1", "controller"), register=False)

    def peer(self, n: int, peer_id: str, role: str = "controller", caps: tuple[str, ...] = (), auto: bool = True) -> Endpoint:
        ep = self.hub.connect(PeerSession(ident(n), peer_id, role, list(caps)), handler=echo, auto=auto)  # type: ignore[arg-type]
        assert self.proto.peer_of(ep.conn) == peer_id
        return ep

    # -- frames
    def body(self, type_: str, sender: str, ts: float | None = None, id_: str | None = None, v: Any = PROTOCOL_VERSION, **fields: Any) -> bytes:
        doc: dict[str, Any] = {"type": type_, "v": v, "id": id_ or self.new_id(), "sender": sender, "ts": self.now if ts is None else ts}
        doc.update(fields)
        return msgspec.json.encode(doc)

    def task_body(self, sender: str, payload: bytes = b'{"n":1}', method: str = "echo", id_: str | None = None) -> bytes:
        raw = self.body("task", sender, id_=id_, method=method, payload="@P@")
        return raw.replace(b'"@P@"', payload)

    def register_body(self, ep: Endpoint, key_text: str, sender: str | None = None, ts: float | None = None, **fields: Any) -> bytes:
        s = ep.session
        assert s.nonce is not None
        return self.body("register", sender or s.peer_id, ts=ts, nonce=s.nonce, role=s.role, key=key_text, **fields)

    # -- observation
    def snapshot(self) -> dict[str, Any]:
        """Everything a refused frame must leave alone."""
        router = self.proto.router
        stats = router.stats.as_dict()
        del stats["not_assigned"], stats["late_results"]  # these count refusals, like proto.rejections
        return {
            "registry": router.registry.snapshot(),
            "stats": stats,
            "tasks": {k: router.assigned_agent(k) for k in list(router._tasks)},
            "pending": self.proto.pending_tasks(),
            "peers": self.proto.connected_peers(),
            "bindings": {pid: p.key_text for pid, p in self.proto._peers.items()},
        }

    def send(self, ep: Endpoint, data: bytes) -> list[Output]:
        mark = len(self.hub.outputs)
        ep.send(data)
        self.hub.run_until_idle()
        return self.hub.outputs[mark:]

    def assert_serving(self) -> None:
        """A healthy controller/agent pair still completes a task, with exactly one outcome."""
        self.served += 1
        tid = self.ctl.submit("echo", {"n": self.served})
        self.hub.run_until_idle()
        outcome = self.ctl.outcomes.get(tid)
        assert isinstance(outcome, Result) and outcome.ok, outcome
        assert msgspec.json.decode(outcome.payload) == {"n": self.served}
        assert self.ctl.outcome_count[tid] == 1
        assert not self.ctl.rejected and not self.agent.rejected

    def expect_rejected(self, ep: Endpoint, data: bytes, code: str) -> list[Output]:
        """Send ``data`` on ``ep``; it must be refused with ``code`` and nothing else may change."""
        registered = self.proto.peer_of(ep.conn) is not None
        before, counted = self.snapshot(), dict(self.proto.rejections)
        outs = self.send(ep, data)
        assert refusals(outs, ep.conn) == [code]
        closes = [o for o in outs if isinstance(o, Close) and o.conn == ep.conn]
        if registered:  # a registered peer is told, and stays connected
            assert closes == []
            assert self.proto.peer_of(ep.conn) is not None
        else:  # a failed handshake ends the connection
            assert [(c.code, c.reason) for c in closes] == [(CLOSE_POLICY, code)]
        delta = {k: v - counted.get(k, 0) for k, v in self.proto.rejections.items() if v != counted.get(k, 0)}
        assert delta == {code: 1}
        assert self.snapshot() == before
        self.assert_serving()
        return outs


def refusals(outs: list[Output], conn: int) -> list[str]:
    codes = []
    for o in outs:
        if isinstance(o, Send) and o.conn == conn:
            body = decode_body(decode_frame(o.data).body)
            if isinstance(body, Error):
                codes.append(body.code)
    return codes


def envelope(sender: str, key: str, sig: str, body: bytes) -> bytes:
    head = msgspec.json.encode({"sender": sender, "key": key, "sig": sig})
    return head[:-1] + b',"body":' + body + b"}"


def key_text_hex(hex_key: str) -> str:
    return encode_public_key(bytes.fromhex(hex_key))


def resign(frame: bytes, sig: bytes) -> bytes:
    """The same frame with another signature."""
    f = decode_frame(frame)
    return envelope(f.sender, f.key, encode_signature(sig), bytes(f.body))


@pytest.fixture
def w() -> Iterator[World]:
    world = World()
    yield world
    world.assert_serving()


# ---------------------------------------------------------------------- 1. non-JSON, truncated
@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"hello", b"\x00\x01\x02", b"{", b'{"sender":', b"}{", b"\xef\xbb\xbf{}", "TRUNC-HALF", "TRUNC-1", "TRAILING"],
)
def test_1_non_json_or_truncated_frames_are_malformed(w: World, registered: bool, data: bytes | str) -> None:
    ep = w.peer(10, "x1") if registered else w.stranger()
    good = seal_raw(ident(10), "x1", w.body("heartbeat", "x1"))
    if data == "TRUNC-HALF":
        data = good[: len(good) // 2]
    elif data == "TRUNC-1":
        data = good[:-1]
    elif data == "TRAILING":
        data = good + b"{}"
    assert isinstance(data, bytes)
    w.expect_rejected(ep, data, errors.MALFORMED)


# ---------------------------------------------------------------------- 2. wrong shape
@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'["x1","ed25519:","sig",{}]',
        b'"frame"',
        b"42",
        b"null",
        b"{}",
        b'{"sender":"x1","key":"ed25519:x","body":{}}',  # no sig
        b'{"sender":7,"key":"ed25519:x","sig":"s","body":{}}',  # sender of the wrong type
        b'{"sender":"x1","key":["k"],"sig":"s","body":{}}',
        b'{"sender":"","key":"ed25519:x","sig":"s","body":{}}',  # empty id
        b'{"sender":"x 1","key":"ed25519:x","sig":"s","body":{}}',  # id outside its alphabet
    ],
)
def test_2_envelope_of_the_wrong_shape_is_invalid_message(w: World, data: bytes) -> None:
    w.expect_rejected(w.peer(10, "x1"), data, errors.INVALID_MESSAGE)


@pytest.mark.parametrize(
    "fields",
    [
        {"ts": "now"},  # wrong type
        {"ts": -1.0},  # out of range
        {"load": -3},
        {"load": 1.5},
        {"id": ""},
        {"id": 5},
        {"id": None},
    ],
)
def test_2_signed_body_of_the_wrong_shape_is_invalid_message(w: World, fields: dict[str, Any]) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    raw = w.body("heartbeat", "x1")
    doc = msgspec.json.decode(raw)
    doc.update(fields)
    w.expect_rejected(ep, seal_raw(ident(10), "x1", msgspec.json.encode(doc)), errors.INVALID_MESSAGE)


def test_2_signed_body_missing_a_field_or_not_an_object_is_invalid_message(w: World) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    doc = msgspec.json.decode(w.body("heartbeat", "x1"))
    del doc["ts"]
    w.expect_rejected(ep, seal_raw(ident(10), "x1", msgspec.json.encode(doc)), errors.INVALID_MESSAGE)
    w.expect_rejected(ep, seal_raw(ident(10), "x1", b'["heartbeat"]'), errors.INVALID_MESSAGE)
    w.expect_rejected(ep, seal_raw(ident(10), "x1", b'"heartbeat"'), errors.INVALID_MESSAGE)


# ---------------------------------------------------------------------- 3. duplicate keys
def test_3_duplicate_key_in_the_envelope_is_malformed(w: World) -> None:
    ep = w.peer(10, "x1")
    good = seal_raw(ident(10), "x1", w.body("heartbeat", "x1"))
    assert good.startswith(b'{"sender":"x1",')
    dup = b'{"sender":"c1",' + good[1:]  # a first-wins parser would see c1
    w.expect_rejected(ep, dup, errors.MALFORMED)


def test_3_duplicate_key_in_a_signed_body_is_malformed_and_never_dispatched(w: World) -> None:
    """The signer's own parser and the router could disagree on the method: refuse it."""
    ep = w.peer(10, "x1")
    raw = w.task_body("x1")
    dup = raw.replace(b'"method":"echo"', b'"method":"admin.wipe","method":"echo"')
    assert dup != raw
    w.expect_rejected(ep, seal_raw(ident(10), "x1", dup), errors.MALFORMED)
    assert not [r for r in w.agent.inbox if isinstance(r.body, Task) and r.body.sender == "x1"]


@pytest.mark.parametrize("payload", [b'{"amount":1,"amount":1000}', b'{"a":{"b":1,"b":2}}', b'[{"k":1,"k":1}]'])
def test_3_duplicate_key_in_a_payload_is_malformed(w: World, payload: bytes) -> None:
    ep = w.peer(10, "x1")
    w.expect_rejected(ep, seal_raw(ident(10), "x1", w.task_body("x1", payload)), errors.MALFORMED)


# ---------------------------------------------------------------------- 4. unknown fields
def test_4_unknown_field_in_the_envelope_is_invalid_message(w: World) -> None:
    ep = w.peer(10, "x1")
    good = seal_raw(ident(10), "x1", w.body("heartbeat", "x1"))
    w.expect_rejected(ep, good[:-1] + b',"admin":true}', errors.INVALID_MESSAGE)


@pytest.mark.parametrize("type_", ["heartbeat", "task", "register"])
def test_4_unknown_field_in_a_signed_body_is_invalid_message(w: World, type_: str) -> None:
    if type_ == "register":
        ep = w.stranger()
        raw = w.register_body(ep, ident(66).public_key_text, priority="high")
        w.expect_rejected(ep, seal_raw(ident(66), "x1", raw), errors.INVALID_MESSAGE)
        return
    ep = w.peer(10, "x1", "agent", ("echo",))
    raw = w.body("heartbeat", "x1", priority="high") if type_ == "heartbeat" else w.task_body("x1")[:-1] + b',"priority":9}'
    w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.INVALID_MESSAGE)


# ---------------------------------------------------------------------- 7. nesting 100,000 deep
@pytest.mark.parametrize("where", ["payload", "body-field", "envelope"])
def test_7_nesting_100k_deep_is_malformed_and_harmless(w: World, where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    ep = w.peer(10, "x1")
    if where == "payload":
        data = seal_raw(ident(10), "x1", w.task_body("x1", deep))
    elif where == "body-field":
        data = seal_raw(ident(10), "x1", w.body("heartbeat", "x1")[:-1] + b',"load":' + deep + b"}")
    else:
        data = envelope("x1", ident(10).public_key_text, "A" * 88, deep)
    limit = sys.getrecursionlimit()
    w.expect_rejected(ep, data, errors.MALFORMED)
    assert sys.getrecursionlimit() == limit
    json.loads("[" * 500 + "]" * 500)  # the interpreter can still recurse normally


def test_7_objects_nested_deep_are_malformed_too(w: World) -> None:
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    ep = w.peer(10, "x1")
    w.expect_rejected(ep, seal_raw(ident(10), "x1", w.task_body("x1", deep)), errors.MALFORMED)


# ---------------------------------------------------------------------- 8. number edge cases
@pytest.mark.parametrize(
    "number",
    [b"1e400", b"-1e400", b"1E+999", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 5000],
    ids=["1e400", "-1e400", "1E+999", "NaN", "-NaN", "Infinity", "-Infinity", "2**64", "-2**63-1", "10**5000"],
)
def test_8_number_edge_cases_in_a_payload_are_malformed(w: World, number: bytes) -> None:
    ep = w.peer(10, "x1")
    w.expect_rejected(ep, seal_raw(ident(10), "x1", w.task_body("x1", b'{"x":' + number + b"}")), errors.MALFORMED)


@pytest.mark.parametrize(
    ("field", "number"),
    [("ts", b"1e400"), ("ts", b"NaN"), ("load", b"18446744073709551616"), ("v", b"18446744073709551616"), ("ts", b"-Infinity")],
)
def test_8_number_edge_cases_in_a_field_are_malformed(w: World, field: str, number: bytes) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    doc = msgspec.json.decode(w.body("heartbeat", "x1"))
    doc[field] = "@N@"
    raw = msgspec.json.encode(doc).replace(b'"@N@"', number)
    w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.MALFORMED)


def test_8_numbers_in_range_but_over_a_field_limit_are_invalid_message(w: World) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    raw = w.body("heartbeat", "x1", load=2**63)  # fits in 64 bits, over the field's bound
    w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.INVALID_MESSAGE)


def test_8_numbers_at_the_edges_of_the_range_are_delivered_exactly(w: World) -> None:
    """The limits are 64-bit integers and finite doubles: the last values inside them pass."""
    payload = b'{"max":18446744073709551615,"min":-9223372036854775808,"big":1.7976931348623157e308,"tiny":5e-324,"z":-0.0}'
    outs = w.send(w.ctl, seal_raw(ident(2), "c1", w.task_body("c1", payload, id_="edges")))
    assert refusals(outs, w.ctl.conn) == []
    result = w.ctl.outcomes["edges"]
    assert isinstance(result, Result) and result.ok
    got = json.loads(bytes(result.payload))
    assert got == {"max": 2**64 - 1, "min": -(2**63), "big": 1.7976931348623157e308, "tiny": 5e-324, "z": -0.0}


# ---------------------------------------------------------------------- 10. signature length / base64
@pytest.mark.parametrize(
    ("sig", "code"),
    [
        ("AAAA", errors.INVALID_SIGNATURE),
        ("A" * 87, errors.INVALID_SIGNATURE),
        ("A" * 89, errors.INVALID_SIGNATURE),
        ("!" * 88, errors.INVALID_SIGNATURE),
        ("-" * 86 + "==", errors.INVALID_SIGNATURE),  # base64url alphabet is not accepted
        ("A" * 86 + "=A", errors.INVALID_SIGNATURE),  # padding in the middle
        (base64.b64encode(b"\x00" * 66).decode(), errors.INVALID_SIGNATURE),  # 88 characters, 66 bytes
        (base64.b64encode(b"\x00" * 63).decode() + "", errors.INVALID_SIGNATURE),  # 84 characters
        ("A" * 200, errors.INVALID_MESSAGE),  # over the envelope's field limit
        ("", errors.INVALID_MESSAGE),
    ],
)
@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
def test_10_signature_of_wrong_length_or_bad_base64(w: World, registered: bool, sig: str, code: str) -> None:
    if registered:
        ep = w.peer(10, "x1")
        body = w.body("heartbeat", "x1")
    else:
        ep = w.stranger()
        body = w.register_body(ep, ident(66).public_key_text)
    key = ident(10 if registered else 66).public_key_text
    w.expect_rejected(ep, envelope("x1", key, sig, body), code)


# ---------------------------------------------------------------------- 11. another key's signature
def test_11_signature_by_another_key_on_a_registered_connection(w: World) -> None:
    ep = w.peer(10, "x1")
    body = w.body("heartbeat", "x1")
    # The right sender and key, signed by someone else: the signature fails.
    forged = envelope("x1", ident(10).public_key_text, encode_signature(ident(11).sign(body)), body)
    w.expect_rejected(ep, forged, errors.INVALID_SIGNATURE)
    # A valid signature, honestly labelled with the other key: not this connection's key.
    w.expect_rejected(ep, seal_raw(ident(11), "x1", body), errors.KEY_MISMATCH)


def test_11_impersonating_another_peer_on_ones_own_connection(w: World) -> None:
    ep = w.peer(10, "x1")
    body = w.task_body("c1")  # claims to come from the controller c1
    w.expect_rejected(ep, envelope("c1", ident(2).public_key_text, encode_signature(ident(10).sign(body)), body), errors.KEY_MISMATCH)


def test_11_registration_signed_by_a_key_other_than_the_one_claimed(w: World) -> None:
    ep = w.stranger()
    body = w.register_body(ep, ident(1).public_key_text, sender="a1")  # a1's id and key
    forged = envelope("a1", ident(1).public_key_text, encode_signature(ident(66).sign(body)), body)
    w.expect_rejected(ep, forged, errors.INVALID_SIGNATURE)


# ---------------------------------------------------------------------- 12. signature over a re-encoding
def test_12_signature_over_a_key_sorted_reencoding_is_invalid(w: World) -> None:
    ep = w.peer(10, "x1")
    raw = w.task_body("x1", b'{"b":2,"a":1}')
    resorted = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert resorted != raw and json.loads(resorted) == json.loads(raw)
    # Signed the sorted form, sent the original bytes ...
    w.expect_rejected(ep, envelope("x1", ident(10).public_key_text, encode_signature(ident(10).sign(resorted)), raw), errors.INVALID_SIGNATURE)
    # ... and signed the original, sent the sorted form (a relay that "normalised" it).
    w.expect_rejected(ep, envelope("x1", ident(10).public_key_text, encode_signature(ident(10).sign(raw)), resorted), errors.INVALID_SIGNATURE)
    assert w.proto.pending_tasks() == 0


# ---------------------------------------------------------------------- 13. one flipped bit
def test_13_one_flipped_bit_in_the_payload_is_invalid_signature(w: World) -> None:
    ep = w.peer(10, "x1")
    good = seal_raw(ident(10), "x1", w.task_body("x1", b'{"amount":105}'))
    at = good.index(b"105") + 2
    flipped = good[:at] + bytes([good[at] ^ 0x01]) + good[at + 1 :]  # 105 -> 104
    assert b'{"amount":104}' in flipped
    w.expect_rejected(ep, flipped, errors.INVALID_SIGNATURE)


def test_13_every_single_bit_flip_of_a_frame_is_refused(w: World) -> None:
    """No one-bit change anywhere in a task frame is ever accepted or executed."""
    ep = w.peer(10, "x1")
    good = seal_raw(ident(10), "x1", w.task_body("x1", b'{"amount":100}', id_="flip"))
    agent_tasks = len(w.agent.inbox)
    codes: set[str] = set()
    for i in range(len(good)):
        for bit in range(8):
            bad = good[:i] + bytes([good[i] ^ (1 << bit)]) + good[i + 1 :]
            outs = w.send(ep, bad)
            [code] = refusals(outs, ep.conn)
            codes.add(code)
    assert len(w.agent.inbox) == agent_tasks and w.proto.pending_tasks() == 0
    assert codes <= {errors.MALFORMED, errors.INVALID_MESSAGE, errors.INVALID_SIGNATURE, errors.KEY_MISMATCH}


# ---------------------------------------------------------------------- 14. small-order / non-canonical keys
@pytest.mark.parametrize("hex_key", SMALL_ORDER_KEYS + NON_CANONICAL_KEYS + [MIXED_ORDER_KEY])
def test_14_small_order_or_non_canonical_key_at_registration_is_invalid_key(w: World, hex_key: str) -> None:
    ep = w.stranger()
    key = key_text_hex(hex_key)
    body = w.register_body(ep, key)
    # R = identity, S = 0: under a small-order key this "verifies" any message with lax verifiers.
    forgery = bytes.fromhex(SMALL_ORDER_KEYS[0]) + bytes(32)
    w.expect_rejected(ep, envelope("x1", key, encode_signature(forgery), body), errors.INVALID_KEY)


@pytest.mark.parametrize("text", ["ed25519:" + "A" * 42 + "B", "ed25519:" + "A" * 42, "ed25519:" + "A" * 44, "x25519:" + "A" * 43, "ed25519:" + "+" * 43])
def test_14_key_text_not_canonically_encoded_is_invalid_key(w: World, text: str) -> None:
    ep = w.stranger()
    body = w.register_body(ep, text)
    w.expect_rejected(ep, envelope("x1", text, encode_signature(ident(66).sign(body)), body), errors.INVALID_KEY)


# ---------------------------------------------------------------------- 15. non-canonical S
def s_plus_l(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "little") + L
    assert s < 2**256
    return sig[:32] + s.to_bytes(32, "little")


@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
def test_15_non_canonical_signature_s_ge_l_is_invalid_signature(w: World, registered: bool) -> None:
    """S + L passes the cofactorless equation; libsodium must still refuse it (malleability)."""
    if registered:
        ep = w.peer(10, "x1")
        good = seal_raw(ident(10), "x1", w.body("heartbeat", "x1"))
    else:
        ep = w.stranger()
        good = seal_raw(ident(66), "x1", w.register_body(ep, ident(66).public_key_text))
    sig = base64.b64decode(decode_frame(good).sig)
    w.expect_rejected(ep, resign(good, s_plus_l(sig)), errors.INVALID_SIGNATURE)


# ---------------------------------------------------------------------- 16. replay inside the window
def test_16_replayed_heartbeat_inside_the_window_is_duplicate(w: World) -> None:
    frame = w.agent.session.heartbeat_frame(w.now)
    assert refusals(w.send(w.agent, frame), w.agent.conn) == []
    w.hub.advance(1.0)
    w.expect_rejected(w.agent, frame, errors.DUPLICATE)


def test_16_replayed_registration_on_the_same_connection_is_duplicate(w: World) -> None:
    ep = w.hub.connect(PeerSession(ident(10), "x1", "controller"), register=False)
    frame = ep.session.register_frame(w.now)
    w.send(ep, frame)
    assert w.proto.peer_of(ep.conn) == "x1"
    w.expect_rejected(ep, frame, errors.DUPLICATE)


def test_16_replayed_task_is_never_executed_twice(w: World) -> None:
    """A task frame seen again gets the one outcome; the agent runs it once."""
    tid, frame = w.ctl.session.task_frame("echo", msgspec.Raw(b'{"n":"once"}'), w.now, "once")
    w.send(w.ctl, frame)
    runs = sum(1 for r in w.agent.inbox if isinstance(r.body, Task) and r.body.id == tid)
    assert runs == 1 and w.ctl.outcome_count[tid] == 1
    [outcome] = [r.frame for r in w.ctl.inbox if isinstance(r.body, Result) and r.body.task_id == tid]
    before, resubmitted = w.snapshot(), w.proto.counters["tasks_resubmitted"]
    for _ in range(3):
        # Each replay is answered with the one stored outcome, byte for byte; nothing runs again.
        assert w.send(w.ctl, frame) == [Send(w.ctl.conn, outcome)]
    assert sum(1 for r in w.agent.inbox if isinstance(r.body, Task) and r.body.id == tid) == 1
    assert w.proto.counters["tasks_resubmitted"] == resubmitted + 3
    assert w.snapshot() == before


def test_16_replayed_task_while_it_runs_gets_one_outcome(w: World) -> None:
    slow = w.peer(20, "s1", "agent", ("slow",), auto=False)
    tid, frame = w.ctl.session.task_frame("slow", msgspec.Raw(b"1"), w.now, "slow-1")
    w.send(w.ctl, frame)
    before = w.snapshot()
    for _ in range(3):
        assert w.send(w.ctl, frame) == []
    assert w.snapshot() == before and len(slow.held) == 1
    slow.answer(slow.held.popleft(), True, 2)
    w.hub.run_until_idle()
    assert w.ctl.outcome_count[tid] == 1


def test_16_replayed_result_is_forwarded_once(w: World) -> None:
    slow = w.peer(20, "s1", "agent", ("slow",), auto=False)
    tid = w.ctl.submit("slow", 1, task_id="slow-2")
    w.hub.run_until_idle()
    result = slow.answer(slow.held.popleft(), True, 2)
    w.hub.run_until_idle()
    dup = w.proto.counters["results_duplicate"]
    before = w.snapshot()
    assert w.send(slow, result) == []
    assert w.proto.counters["results_duplicate"] == dup + 1
    assert w.snapshot() == before and w.ctl.outcome_count[tid] == 1


# ---------------------------------------------------------------------- 17. replay after the window
def test_17_replay_after_the_window_is_stale(w: World) -> None:
    heartbeat = w.agent.session.heartbeat_frame(w.now)
    tid, task = w.ctl.session.task_frame("echo", msgspec.Raw(b"7"), w.now, "late-replay")
    w.send(w.agent, heartbeat)
    w.send(w.ctl, task)
    assert w.ctl.outcome_count[tid] == 1
    w.hub.advance(WINDOW + 1.0)
    w.agent.heartbeat()  # keep the healthy agent's lease
    w.hub.run_until_idle()
    w.expect_rejected(w.agent, heartbeat, errors.STALE)
    w.expect_rejected(w.ctl, task, errors.STALE)
    assert sum(1 for r in w.agent.inbox if isinstance(r.body, Task) and r.body.id == tid) == 1


# ---------------------------------------------------------------------- 18. clock skew
@pytest.mark.parametrize("skew", [-WINDOW, -WINDOW + 1.0, -1.0, 1.0, WINDOW - 1.0, WINDOW])
def test_18_clock_skew_inside_the_window_is_accepted(w: World, skew: float) -> None:
    ep = w.peer(10, "x1", "agent", ("other",))
    counted = dict(w.proto.rejections)
    raw = w.body("heartbeat", "x1", ts=w.now + skew)
    assert refusals(w.send(ep, seal_raw(ident(10), "x1", raw)), ep.conn) == []
    assert w.proto.rejections == counted
    tid, task = w.ctl.session.task_frame("echo", msgspec.Raw(b"1"), w.now + skew, f"skew{skew}")
    w.send(w.ctl, task)
    assert isinstance(w.ctl.outcomes[tid], Result)


@pytest.mark.parametrize("skew", [-WINDOW - 0.001, WINDOW + 0.001, -10 * WINDOW, 10 * WINDOW, 86_400.0 * 365])
def test_18_clock_skew_outside_the_window_is_stale(w: World, skew: float) -> None:
    ep = w.peer(10, "x1", "agent", ("other",))
    w.expect_rejected(ep, seal_raw(ident(10), "x1", w.body("heartbeat", "x1", ts=w.now + skew)), errors.STALE)
    stranger = w.stranger()
    raw = w.register_body(stranger, ident(66).public_key_text, ts=w.now + skew)
    w.expect_rejected(stranger, seal_raw(ident(66), "x1", raw), errors.STALE)


# ---------------------------------------------------------------------- 19. registration replayed
def test_19_registration_replayed_on_a_new_connection_is_bad_nonce(w: World) -> None:
    victim = w.hub.connect(PeerSession(ident(10), "v1", "agent", ["echo"]), handler=echo, register=False)
    frame = victim.session.register_frame(w.now)
    w.send(victim, frame)
    assert w.proto.peer_of(victim.conn) == "v1"
    for _ in range(2):
        w.expect_rejected(w.stranger(), frame, errors.BAD_NONCE)
    assert w.proto.peer_of(victim.conn) == "v1"


# ---------------------------------------------------------------------- 20. id bound to another key
@pytest.mark.parametrize("victim", ["a1", "c1"])
def test_20_id_registered_with_a_different_key_is_key_mismatch(w: World, victim: str) -> None:
    role = "agent" if victim == "a1" else "controller"
    ep = w.hub.connect(PeerSession(ident(66), victim, role, ["echo"] if role == "agent" else []), register=False)  # type: ignore[arg-type]
    w.expect_rejected(ep, ep.session.register_frame(w.now), errors.KEY_MISMATCH)


# ---------------------------------------------------------------------- 21. result from the wrong agent
def test_21_result_from_an_agent_not_assigned_is_not_assigned(w: World) -> None:
    slow = w.peer(20, "s1", "agent", ("slow",), auto=False)
    other = w.peer(21, "s2", "agent", ("slow",), auto=False)  # capable, but not chosen
    tid = w.ctl.submit("slow", {"n": 1}, task_id="assigned")
    w.hub.run_until_idle()
    [held] = slow.held
    assert isinstance(held.body, Task) and w.proto.router.assigned_agent(task_key("c1", tid)) == "s1"
    w.expect_rejected(other, other.session.result_frame(held.body, msgspec.Raw(b'"forged"'), w.now), errors.NOT_ASSIGNED)
    # The healthy agent without the capability tries too.
    w.expect_rejected(w.agent, w.agent.session.result_frame(held.body, msgspec.Raw(b'"forged"'), w.now), errors.NOT_ASSIGNED)
    assert tid not in w.ctl.outcomes
    slow.answer(slow.held.popleft(), True, "real")
    w.hub.run_until_idle()
    outcome = w.ctl.outcomes[tid]
    assert isinstance(outcome, Result) and msgspec.json.decode(outcome.payload) == "real"
    assert w.ctl.outcome_count[tid] == 1


def test_21_result_from_a_controller_is_invalid_message(w: World) -> None:
    slow = w.peer(20, "s1", "agent", ("slow",), auto=False)
    w.ctl.submit("slow", 1, task_id="ctl-result")
    w.hub.run_until_idle()
    [held] = slow.held
    assert isinstance(held.body, Task)
    ep = w.peer(10, "x1")
    w.expect_rejected(ep, ep.session.result_frame(held.body, msgspec.Raw(b"0"), w.now), errors.INVALID_MESSAGE)


# ---------------------------------------------------------------------- 22. signature reused across types
def test_22_signature_of_one_message_type_reused_on_another(w: World) -> None:
    hb = w.body("heartbeat", "a1", id_="same-id")
    sig = encode_signature(ident(1).sign(hb))
    dereg = w.body("deregister", "a1", id_="same-id")
    task = w.task_body("a1", id_="same-id")
    for other in (dereg, task):
        w.expect_rejected(w.agent, envelope("a1", ident(1).public_key_text, sig, other), errors.INVALID_SIGNATURE)
    assert w.proto.peer_of(w.agent.conn) == "a1"


def test_22_signature_made_for_another_protocol_with_the_same_key(w: World) -> None:
    """Signatures cover CONTEXT + body: a plain Ed25519 signature of the same bytes is refused."""
    import nacl.signing

    hb = w.body("heartbeat", "a1")
    plain = nacl.signing.SigningKey(bytes([1]) * 32).sign(hb).signature
    assert ident(1).sign(hb) != plain and CONTEXT  # the domain separation is what refuses it
    w.expect_rejected(w.agent, envelope("a1", ident(1).public_key_text, encode_signature(plain), hb), errors.INVALID_SIGNATURE)


def test_22_router_signed_challenge_cannot_be_replayed_as_a_peer_message(w: World) -> None:
    ep = w.peer(10, "x1")
    [challenge] = [o for o in w.hub.outputs if isinstance(o, Send) and o.conn == ep.conn][:1]
    w.expect_rejected(ep, challenge.data, errors.KEY_MISMATCH)


# ---------------------------------------------------------------------- 23. unknown version, type or method
@pytest.mark.parametrize("v", [0, 1, 2, 99, -1, "1.0", "1", "2.0", "1.10", 1.1, None])
@pytest.mark.parametrize("registered", [False, True], ids=["handshake", "registered"])
def test_23_unknown_protocol_version_is_unsupported_version(w: World, registered: bool, v: Any) -> None:
    if registered:
        ep = w.peer(10, "x1", "agent", ("echo",))
        raw = w.body("heartbeat", "x1", v=v)
        w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.UNSUPPORTED_VERSION)
        # A future version's shape (a new field, a new type) is still named as a version problem.
        raw = w.body("heartbeat", "x1", v=v, priority=1)
        w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.UNSUPPORTED_VERSION)
        raw = w.body("stream-open", "x1", v=v)
        w.expect_rejected(ep, seal_raw(ident(10), "x1", raw), errors.UNSUPPORTED_VERSION)
    else:
        ep = w.stranger()
        raw = w.register_body(ep, ident(66).public_key_text)
        raw = raw.replace(b'"v":"1.1",', b'"v":' + msgspec.json.encode(v) + b",")
        w.expect_rejected(ep, seal_raw(ident(66), "x1", raw), errors.UNSUPPORTED_VERSION)


@pytest.mark.parametrize("type_", ["frobnicate", "", "Task", None, 7])
def test_23_unknown_message_type_is_invalid_message(w: World, type_: Any) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    doc = msgspec.json.decode(w.body("heartbeat", "x1"))
    doc["type"] = type_
    w.expect_rejected(ep, seal_raw(ident(10), "x1", msgspec.json.encode(doc)), errors.INVALID_MESSAGE)


@pytest.mark.parametrize("type_", ["challenge", "register-ack", "error", "goaway"])
def test_23_router_only_message_types_from_a_peer_are_invalid_message(w: World, type_: str) -> None:
    ep = w.peer(10, "x1", "agent", ("echo",))
    fields: dict[str, Any] = {
        "challenge": {"nonce": "n" * 16, "heartbeat_s": 1.0, "lease_s": 3.0, "window_s": 60.0},
        "register-ack": {"ref": "r", "peer": "x1", "role": "agent", "heartbeat_s": 1.0, "lease_s": 3.0},
        "error": {"code": "timeout", "task_id": "t"},
        "goaway": {"drain_s": 1.0},
    }[type_]
    w.expect_rejected(ep, seal_raw(ident(10), "x1", w.body(type_, "x1", **fields)), errors.INVALID_MESSAGE)


def test_23_task_for_an_unknown_method_ends_with_no_agent(w: World) -> None:
    """Not a refusal of the frame: the task is accepted and ends with one error outcome."""
    tid = w.ctl.submit("no.such.method", {}, task_id="unknown-method")
    w.hub.run_until_idle()
    outcome = w.ctl.outcomes[tid]
    assert isinstance(outcome, Error) and outcome.code == errors.NO_AGENT
    assert w.ctl.outcome_count[tid] == 1 and w.proto.pending_tasks() == 0
    assert w.proto.router.stats.failed == {errors.NO_AGENT: 1}


# ---------------------------------------------------------------------- 24. before registration
@pytest.mark.parametrize("type_", ["heartbeat", "task", "result", "deregister"])
def test_24_any_message_before_registration_is_auth_required(w: World, type_: str) -> None:
    ep = w.stranger()
    if type_ == "task":
        raw = w.task_body("x1")
    elif type_ == "result":
        raw = w.body("result", "x1", task_id="t1", requester="c1", method="echo", payload=1)
    else:
        raw = w.body(type_, "x1")
    w.expect_rejected(ep, seal_raw(ident(66), "x1", raw), errors.AUTH_REQUIRED)


def test_24_a_registered_peers_own_frame_on_a_fresh_connection_is_auth_required(w: World) -> None:
    """Stolen frames do not carry a session: a1's valid heartbeat on a new connection is refused."""
    frame = w.agent.session.heartbeat_frame(w.now)
    w.expect_rejected(w.stranger(), frame, errors.AUTH_REQUIRED)


def test_10_signature_text_with_non_zero_padding_bits_is_refused(w: World) -> None:
    """base64 can spell the same 64 bytes several ways; only the canonical one is accepted."""
    ep = w.peer(10, "x1")
    good = seal_raw(ident(10), "x1", w.body("heartbeat", "x1"))
    f = decode_frame(good)
    assert f.sig.endswith("==")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(f.sig[-3])
    sibling = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last ^ 0b0001]
    twin = f.sig[:-3] + sibling + "=="
    assert base64.b64decode(twin) == base64.b64decode(f.sig) and twin != f.sig
    w.expect_rejected(ep, envelope("x1", f.key, twin, bytes(f.body)), errors.INVALID_SIGNATURE)
    assert refusals(w.send(ep, good), ep.conn) == []  # the canonical spelling is fine


def test_edge_policy_leaves_signatures_to_the_receiver() -> None:
    """With ``verify="edge"`` the router forwards a badly signed task unverified (as
    docs/SECURITY.md says); the agent refuses it, never runs it, and the task times out."""
    w = World(verify="edge")
    raw = w.task_body("c1", b'{"n":"forged"}', id_="edge-1")
    forged = envelope("c1", ident(2).public_key_text, encode_signature(ident(66).sign(raw)), raw)
    ran_before = len(w.agent.inbox)
    assert refusals(w.send(w.ctl, forged), w.ctl.conn) == []  # not checked at the router
    assert [e.code for e in w.agent.rejected] == [errors.INVALID_SIGNATURE]
    assert len(w.agent.inbox) == ran_before
    w.hub.advance(RouterConfig().attempt_timeout_s * RouterConfig().max_attempts + 1.0)
    outcome = w.ctl.outcomes["edge-1"]
    assert isinstance(outcome, Error) and outcome.code == errors.TIMEOUT
    assert {e.code for e in w.agent.rejected} == {errors.INVALID_SIGNATURE}  # each retry refused too
    w.agent.rejected.clear()
    w.agent.heartbeat()
    w.assert_serving()
