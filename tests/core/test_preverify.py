"""Signature checks run ahead of ``frame_received`` (``prepare_verify``) give the verdicts of the inline path."""

from __future__ import annotations

import random

import msgspec

from aicp import errors
from aicp.messages import Error, decode_body, decode_frame, payload
from aicp.peer import PeerSession
from aicp.protocol import Close, Output, ProtocolConfig, RouterProtocol, Send, Verification
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

NOW = 1.7e9
AGENT, CTL = Identity(bytes([7]) * 32), Identity(bytes([8]) * 32)


def world(verify: str = "every-hop") -> tuple[RouterProtocol, PeerSession, PeerSession]:
    proto = RouterProtocol(Identity(bytes([9]) * 32), Router(RouterConfig(), "round_robin", random.Random(1)), ProtocolConfig(verify=verify))  # type: ignore[arg-type]
    agent = PeerSession(AGENT, "a1", "agent", ["m"])
    ctl = PeerSession(CTL, "c1", "controller")
    for conn, peer in ((1, agent), (2, ctl)):
        [challenge] = proto.connection_made(conn, NOW)
        assert isinstance(challenge, Send)
        peer.receive(challenge.data, NOW)
        proto.frame_received(conn, peer.register_frame(NOW), NOW)
    return proto, agent, ctl


def tampered(frame: bytes) -> bytes:
    """The same frame with one payload byte changed: its signature no longer verifies."""
    return frame.replace(b'"hello"', b'"hellO"')


def summary(outputs: list[Output]) -> list[tuple[object, ...]]:
    """Outputs without the router's own ids and signatures: forwarded bytes verbatim, router frames by type and code."""
    out: list[tuple[object, ...]] = []
    for o in outputs:
        if isinstance(o, Close):
            out.append(("close", o.conn, o.code))
            continue
        body = decode_body(decode_frame(o.data).body)
        out.append(("error", o.conn, body.code, body.task_id) if isinstance(body, Error) else ("send", o.conn, o.data))
    return out


def script(ctl: PeerSession, agent: PeerSession) -> list[tuple[int, bytes]]:
    _tid1, t1 = ctl.task_frame("m", payload("hello"), NOW, "t1")
    _tid2, t2 = ctl.task_frame("m", payload("hello"), NOW, "t2")
    task = decode_body(decode_frame(t1).body)
    r1 = agent.result_frame(task, payload("hello"), NOW)  # type: ignore[arg-type]
    return [(2, tampered(t2)), (2, t1), (1, tampered(r1)), (1, r1), (1, r1), (2, b"{not json"), (2, t2)]


def test_pre_verified_frames_give_the_same_outputs_and_state_as_inline_checks() -> None:
    inline, a1, c1 = world()
    ahead, _, _ = world()  # the same identities: one script of frames fits both routers
    for conn, data in script(c1, a1):
        data2 = bytes(data)
        want = inline.frame_received(conn, data, NOW)
        v = ahead.prepare_verify(conn, data2)
        if v is not None:
            v.run()
            got = ahead.frame_received(conn, v.data, NOW, v)
        else:
            got = ahead.frame_received(conn, data2, NOW)
        assert summary(got) == summary(want)
    assert inline.rejections == ahead.rejections == {errors.INVALID_SIGNATURE: 2, errors.MALFORMED: 1}
    assert inline.counters == ahead.counters
    assert inline.router.stats.as_dict() == ahead.router.stats.as_dict()


def test_a_verification_not_yet_run_is_made_inline() -> None:
    proto, _agent, ctl = world()
    _, frame = ctl.task_frame("m", payload("hello"), NOW, "t1")
    bad = tampered(frame)
    v = proto.prepare_verify(2, bad)
    assert isinstance(v, Verification) and not v.done
    [err] = proto.frame_received(2, v.data, NOW, v)
    assert isinstance(err, Send) and decode_body(decode_frame(err.data).body).code == errors.INVALID_SIGNATURE  # type: ignore[union-attr]


def test_nothing_is_prepared_before_registration_under_edge_or_for_another_key() -> None:
    proto, _agent, ctl = world()
    [_challenge] = proto.connection_made(3, NOW)
    _, frame = ctl.task_frame("m", payload("hello"), NOW, "t1")
    assert proto.prepare_verify(3, frame) is None  # the handshake is always checked inline
    assert proto.prepare_verify(1, frame) is None  # the controller's key on the agent's connection
    assert proto.prepare_verify(2, b"{not json") is None
    assert proto.prepare_verify(99, frame) is None
    edge, _, ctl_edge = world("edge")
    assert edge.prepare_verify(2, ctl_edge.task_frame("m", payload(1), NOW)[1]) is None
    v = proto.prepare_verify(2, frame)
    assert v is not None and v.key_raw == CTL.public_key and msgspec.json.decode(v.frame.body)["id"] == "t1"
