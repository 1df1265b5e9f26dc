"""Protocol 1.1 (issue 9, part 3): each rule docs/PROTOCOL.md now writes down, pinned through the sans-I/O router.

One section per point of the issue: results for tasks a peer does not own, refusals
before admission, id conflicts, the order of checks, closes and the odd corners,
hints in error frames, and the /agents document.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import PROTOCOL_VERSION, Challenge, Error, Result, Task, decode_body, decode_frame, encode, seal, seal_raw
from aicp.peer import PeerSession
from aicp.protocol import CLOSE_POLICY, CLOSE_UNSUPPORTED_DATA, Close, Output, ProtocolConfig, RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

T0 = 1_000_000.0


class Tap(InProcessHub):
    """A hub that keeps every router output, frames sent just before a close included."""

    def __init__(self, proto: RouterProtocol) -> None:
        super().__init__(proto, T0)
        self.outputs: list[Output] = []

    def _apply(self, outputs: list[Send | Close]) -> None:
        self.outputs.extend(outputs)
        super()._apply(outputs)

    def send(self, ep: Endpoint, data: bytes, binary: bool = False) -> list[Output]:
        """Send one frame from ``ep`` and return what the router did."""
        mark = len(self.outputs)
        if binary:
            self._apply(self.proto.frame_received(ep.conn, data, self.now, binary=True))
        else:
            ep.send(data)
        self.run_until_idle()
        return self.outputs[mark:]


def make(verify: str = "every-hop", **router_cfg: Any) -> Tap:
    return Tap(RouterProtocol(Identity(b"\x07" * 32), Router(RouterConfig(**router_cfg), "round_robin", random.Random(1)), ProtocolConfig(verify=verify)))  # type: ignore[arg-type]


def agent(hub: InProcessHub, name: str, auto: bool = True, caps: tuple[str, ...] = ("m",)) -> Endpoint:
    return hub.connect(PeerSession(Identity.generate(), name, "agent", list(caps)), handler=lambda t: msgspec.json.decode(t.payload), auto=auto)


def controller(hub: InProcessHub, name: str = "c1") -> Endpoint:
    return hub.connect(PeerSession(Identity.generate(), name, "controller"))


def errors_to(outs: list[Output], ep: Endpoint) -> list[Error]:
    found = []
    for o in outs:
        if isinstance(o, Send) and o.conn == ep.conn:
            body = decode_body(decode_frame(o.data).body)
            if isinstance(body, Error):
                found.append(body)
    return found


def closes_of(outs: list[Output], ep: Endpoint) -> list[int]:
    return [o.code for o in outs if isinstance(o, Close) and o.conn == ep.conn]


def result_for(ep: Endpoint, task: Task, now: float, obj: Any = "r") -> bytes:
    return ep.session.result_frame(task, msgspec.Raw(encode(obj)), now)


# ---------------------------------------------------------------------- 1. results nobody assigned
def test_result_for_an_unknown_task_is_not_assigned_and_names_only_the_result() -> None:
    hub = make()
    a = agent(hub, "a1")
    ghost = Task(v=PROTOCOL_VERSION, id="never-sent", sender="c1", ts=hub.now, method="m", payload=msgspec.Raw(b"1"))
    frame = result_for(a, ghost, hub.now)
    for _ in range(2):  # the refusal is not remembered: the same frame is refused again, not deduplicated
        [err] = errors_to(hub.send(a, frame), a)
        assert err.code == errors.NOT_ASSIGNED
        assert err.ref == decode_body(decode_frame(frame).body).id and err.task_id is None and err.method is None
    assert hub.proto.rejections == {errors.NOT_ASSIGNED: 2}


def test_result_for_another_agents_finished_task_is_not_assigned_but_its_own_agent_is_dropped_as_late() -> None:
    hub = make()
    a1 = agent(hub, "a1", auto=False)
    a2 = agent(hub, "a2", auto=False)
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    [held] = a1.held
    assert isinstance(held.body, Task)
    a1.answer(held, True, "first")
    hub.run_until_idle()
    assert isinstance(c.outcomes[tid], Result)
    # another agent answers the finished task: told
    [err] = errors_to(hub.send(a2, result_for(a2, held.body, hub.now)), a2)
    assert err.code == errors.NOT_ASSIGNED
    # the agent that ran it answers again under a new message id: dropped silently, counted as late
    assert errors_to(hub.send(a1, result_for(a1, held.body, hub.now, "again")), a1) == []
    assert hub.proto.counters["results_late"] == 1
    assert c.outcome_count[tid] == 1


# ---------------------------------------------------------------------- 2. refusals before admission
def test_a_task_refused_as_stale_is_no_outcome_and_its_id_stays_free() -> None:
    hub = make()
    agent(hub, "a1")
    c = controller(hub)
    _, stale = c.session.task_frame("m", msgspec.Raw(b"5"), hub.now - 120.0, "x")
    [err] = errors_to(hub.send(c, stale), c)
    assert err.code == errors.STALE and err.task_id == "x" and err.method == "m"
    assert err.code not in errors.OUTCOME_CODES
    _, fresh = c.session.task_frame("m", msgspec.Raw(b"5"), hub.now, "x")
    hub.send(c, fresh)
    res = c.inbox[-1].body
    assert isinstance(res, Result) and res.task_id == "x" and msgspec.json.decode(res.payload) == 5
    assert hub.proto.counters["tasks_accepted"] == 1


def test_a_task_refused_while_draining_is_not_remembered() -> None:
    hub = make()
    agent(hub, "a1")
    c = controller(hub)
    hub._apply(hub.proto.begin_drain(hub.now, 5.0))
    hub.run_until_idle()
    for _ in range(2):  # the same id twice: shutting-down both times, never duplicate
        _, frame = c.session.task_frame("m", msgspec.Raw(b"1"), hub.now, "d1")
        [err] = errors_to(hub.send(c, frame), c)
        assert err.code == errors.SHUTTING_DOWN and err.task_id == "d1"
    assert hub.proto.counters["tasks_accepted"] == 0


def test_a_task_shed_at_max_tasks_is_refused_and_runs_when_sent_again() -> None:
    hub = make(max_tasks=1)
    a = agent(hub, "a1", auto=False)
    c = controller(hub)
    first = c.submit("m", 1)
    hub.run_until_idle()
    _, frame = c.session.task_frame("m", msgspec.Raw(b"2"), hub.now, "second")
    [err] = errors_to(hub.send(c, frame), c)
    assert err.code == errors.OVERLOADED and err.task_id == "second"
    a.answer(a.held.popleft(), True, "one")
    hub.run_until_idle()
    _, frame = c.session.task_frame("m", msgspec.Raw(b"2"), hub.now, "second")
    hub.send(c, frame)
    assert len(a.held) == 1 and a.held[0].body.id == "second"
    assert isinstance(c.outcomes[first], Result)


# ---------------------------------------------------------------------- 3. id conflicts
def test_a_finished_task_id_with_another_payload_or_method_is_id_conflict_and_the_same_task_gets_its_outcome() -> None:
    hub = make()
    agent(hub, "a1", caps=("m", "n"))
    c = controller(hub)
    c.submit("m", {"x": 1}, task_id="t")
    hub.run_until_idle()
    original = c.inbox[-1].frame
    for method, obj in (("m", {"x": 2}), ("n", {"x": 1})):
        _, frame = c.session.task_frame(method, msgspec.Raw(encode(obj)), hub.now, "t")
        outs = hub.send(c, frame)
        [err] = errors_to(outs, c)
        assert err.code == errors.ID_CONFLICT and err.task_id == "t" and err.method == method
        assert [o for o in outs if isinstance(o, Send) and o.data == original] == []
    # the same method and payload bytes (another deadline, a new signature): the stored outcome, byte for byte
    _, frame = c.session.task_frame("m", msgspec.Raw(encode({"x": 1})), hub.now + 1, "t", timeout_ms=9000.0)
    assert [o.data for o in hub.send(c, frame) if isinstance(o, Send)] == [original]
    assert hub.proto.counters["tasks_accepted"] == 1


def test_a_running_task_id_with_another_payload_is_id_conflict_and_the_task_still_ends_once() -> None:
    hub = make()
    a = agent(hub, "a1", auto=False)
    c = controller(hub)
    c.submit("m", 1, task_id="t")
    hub.run_until_idle()
    _, frame = c.session.task_frame("m", msgspec.Raw(b"2"), hub.now, "t")
    [err] = errors_to(hub.send(c, frame), c)
    assert err.code == errors.ID_CONFLICT
    assert len(a.held) == 1
    a.answer(a.held.popleft(), True, "done")
    hub.run_until_idle()
    results = [r.body for r in c.inbox if isinstance(r.body, Result)]
    assert len(results) == 1 and msgspec.json.decode(results[0].payload) == "done"


# ---------------------------------------------------------------------- 4. order of checks after registration
@pytest.mark.parametrize("policy", ["every-hop", "edge"])
def test_a_frame_with_another_key_and_a_bad_signature_is_key_mismatch_under_both_policies(policy: str) -> None:
    hub = make(policy)
    a = agent(hub, "a1")
    stranger = Identity.generate()
    hb = a.session.heartbeat_frame(hub.now)
    f = decode_frame(hb)
    forged = hb.replace(f.key.encode(), stranger.public_key_text.encode())
    [err] = errors_to(hub.send(a, forged), a)
    assert err.code == errors.KEY_MISMATCH


@pytest.mark.parametrize("policy", ["every-hop", "edge"])
def test_a_frame_must_come_from_its_connections_own_peer_under_both_policies(policy: str) -> None:
    hub = make(policy)
    a1 = agent(hub, "a1")
    a2 = agent(hub, "a2")
    # a2's own valid heartbeat, sent on a1's connection
    [err] = errors_to(hub.send(a1, a2.session.heartbeat_frame(hub.now)), a1)
    assert err.code == errors.KEY_MISMATCH


def test_the_signature_is_checked_before_freshness() -> None:
    hub = make()
    a = agent(hub, "a1")
    stale = a.session.heartbeat_frame(hub.now - 500)
    other = Identity.generate()  # signs a1's stale body; the envelope names a1's key
    bad = seal_raw(other, "a1", bytes(decode_frame(stale).body)).replace(other.public_key_text.encode(), a.session.identity.public_key_text.encode())
    [err] = errors_to(hub.send(a, bad), a)
    assert err.code == errors.INVALID_SIGNATURE


# ---------------------------------------------------------------------- 5. closes and the odd corners
def test_binary_frames_close_with_1003_before_and_after_registration_without_an_error_frame() -> None:
    hub = make()
    a = agent(hub, "a1")
    stranger = hub.connect(PeerSession(Identity.generate(), "x", "agent", ["m"]), register=False)
    for ep, frame in ((a, a.session.heartbeat_frame(hub.now)), (stranger, b"{}")):
        outs = hub.send(ep, frame, binary=True)
        assert closes_of(outs, ep) == [CLOSE_UNSUPPORTED_DATA] and errors_to(outs, ep) == []
    assert hub.proto.counters["frames_binary"] == 2 and hub.proto.rejections == {}


def test_a_second_register_on_a_registered_connection_is_bad_nonce_and_changes_nothing() -> None:
    hub = make()
    a = agent(hub, "a1")
    ack_nonce = a.session.nonce
    a.session.capabilities = ["other"]
    outs = hub.send(a, a.session.register_frame(hub.now))
    [err] = errors_to(outs, a)
    assert err.code == errors.BAD_NONCE and closes_of(outs, a) == []
    assert hub.proto.peer_of(a.conn) == "a1" and ack_nonce is not None
    state = hub.proto.router.registry.get("a1")
    assert state is not None and state.capabilities == ("m",)


def test_controllers_hold_no_lease_and_their_heartbeats_are_accepted_without_effect() -> None:
    hub = make(lease_s=10.0, heartbeat_s=3.0)
    c = controller(hub)
    assert hub.send(c, c.session.heartbeat_frame(hub.now)) == []
    hub.advance(100.0)
    assert hub.proto.connected_peers() == {"c1": "controller"}
    assert c.closed is None
    # a bad heartbeat from a controller is still refused
    [err] = errors_to(hub.send(c, c.session.heartbeat_frame(hub.now - 500)), c)
    assert err.code == errors.STALE


def test_no_peer_may_register_the_routers_own_id() -> None:
    hub = make()
    ep = hub.connect(PeerSession(Identity.generate(), "router", "agent", ["m"]), register=False)
    outs = hub.send(ep, ep.session.register_frame(hub.now))
    [err] = errors_to(outs, ep)
    assert err.code == errors.KEY_MISMATCH and closes_of(outs, ep) == [CLOSE_POLICY]
    assert hub.proto.connected_peers() == {}


def test_the_challenge_nonce_is_32_base64url_characters_and_fresh_per_connection() -> None:
    hub = make()
    nonces = set()
    for _ in range(3):
        ep = hub.connect(PeerSession(Identity.generate(), "x", "controller"), register=False)
        [challenge] = [r.body for r in ep.inbox if isinstance(r.body, Challenge)]
        assert len(challenge.nonce) == 32 and set(challenge.nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        nonces.add(challenge.nonce)
    assert len(nonces) == 3


def test_timeout_ms_is_capped_at_max_deadline_s() -> None:
    hub = make(attempt_timeout_s=10_000.0, lease_s=10_000.0)  # only the overall deadline can end the task
    a = agent(hub, "a1", auto=False)
    c = controller(hub)
    tid = c.submit("m", 1, timeout_ms=1e9)  # asks for 11.6 days
    hub.advance(3599.0)
    assert tid not in c.outcomes and len(a.held) == 1
    hub.advance(2.0)
    err = c.outcomes[tid]
    assert isinstance(err, Error) and err.code == errors.TIMEOUT


@pytest.mark.parametrize("v", [1, "1.0", "2.0"])
def test_an_old_or_unknown_version_is_unsupported_version_naming_the_routers(v: Any) -> None:
    hub = make()
    ep = hub.connect(PeerSession(Identity.generate(), "old", "agent", ["m"]), register=False)
    raw = decode_frame(ep.session.register_frame(hub.now)).body
    old = bytes(raw).replace(b'"v":"1.1"', b'"v":' + encode(v))
    outs = hub.send(ep, seal_raw(ep.session.identity, "old", old))
    [err] = errors_to(outs, ep)
    assert err.code == errors.UNSUPPORTED_VERSION and '"1.1"' in err.message
    assert closes_of(outs, ep) == [CLOSE_POLICY]


# ---------------------------------------------------------------------- 6. hints from unverified bodies
def test_a_task_failing_verification_is_refused_with_its_claimed_ids_as_hints() -> None:
    hub = make()
    agent(hub, "a1")
    c = controller(hub)
    _, frame = c.session.task_frame("m", msgspec.Raw(b"1"), hub.now, "claimed")
    tampered = frame.replace(b'"payload":1', b'"payload":2')
    assert tampered != frame
    [err] = errors_to(hub.send(c, tampered), c)
    assert err.code == errors.INVALID_SIGNATURE
    assert (err.ref, err.task_id, err.method) == ("claimed", "claimed", "m")
    assert hub.proto.counters["tasks_accepted"] == 0


# ---------------------------------------------------------------------- 7. /agents carries the bound keys
def test_the_agents_document_lists_each_agents_bound_key_and_connection() -> None:
    hub = make()
    a1 = agent(hub, "a1")
    a2 = agent(hub, "a2")
    hub.disconnect(a2)
    doc = hub.proto.agents_document()
    assert doc["protocol"] == PROTOCOL_VERSION and doc["router"] == "router"
    assert doc["router_key"] == hub.proto.identity.public_key_text
    by_id = {a["agent_id"]: a for a in doc["agents"]}  # type: ignore[attr-defined]
    assert by_id["a1"]["key"] == a1.session.identity.public_key_text and by_id["a1"]["connected"] is True
    assert by_id["a2"]["key"] == a2.session.identity.public_key_text and by_id["a2"]["connected"] is False
    assert msgspec.json.decode(msgspec.json.encode(doc)) == doc  # plain JSON


def test_router_frames_use_the_string_version() -> None:
    hub = make()
    c = controller(hub)
    assert all(r.body.v == "1.1" for r in c.inbox)
    assert b'"v":"1.1"' in seal(hub.proto.identity, "router", c.inbox[0].body)
