"""Whole conversations through RouterProtocol, in memory, with real signatures and a manual clock."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.lab.demo import in_process_demo
from aicp.messages import PROTOCOL_VERSION, Error, Goaway, Progress, RegisterAck, Result, Task, payload, seal
from aicp.peer import READY, PeerSession
from aicp.protocol import CLOSE_LEASE_EXPIRED, CLOSE_NORMAL, CLOSE_REPLACED, ProtocolConfig, RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity


def make_hub(strategy: str = "round_robin", **router_cfg: Any) -> InProcessHub:
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(**router_cfg), strategy, random.Random(1)))
    return InProcessHub(proto)


def agent(hub: InProcessHub, name: str, caps: list[str] | None = None, handler: Any = None, auto: bool = True, ident: Identity | None = None) -> Endpoint:
    session = PeerSession(ident or Identity.generate(), name, "agent", caps or ["m"])
    return hub.connect(session, handler=handler or (lambda task: {"by": name, "echo": msgspec.json.decode(task.payload)}), auto=auto)


def controller(hub: InProcessHub, name: str = "ctl", ident: Identity | None = None) -> Endpoint:
    return hub.connect(PeerSession(ident or Identity.generate(), name, "controller"))


def test_registration_is_acknowledged_and_binds_the_peer() -> None:
    hub = make_hub()
    a = agent(hub, "a1")
    assert a.session.state == READY
    assert isinstance(a.inbox[-1].body, RegisterAck) and a.inbox[-1].body.peer == "a1"
    assert hub.proto.connected_peers() == {"a1": "agent"}
    assert hub.proto.router.registry.get("a1") is not None


def test_result_reaches_the_controller_verbatim_and_verified() -> None:
    hub = make_hub()
    a = agent(hub, "a1")
    c = controller(hub)
    tid = c.submit("m", {"x": 1})
    hub.run_until_idle()
    res = c.outcomes[tid]
    assert isinstance(res, Result) and res.sender == "a1"
    assert msgspec.json.decode(res.payload) == {"by": "a1", "echo": {"x": 1}}
    # the agent received the controller's own frame, and the controller the agent's
    task_frames = [r.frame for r in a.inbox if isinstance(r.body, Task)]
    assert len(task_frames) == 1 and b'"sender":"ctl"' in task_frames[0]
    assert c.inbox[-1].key == a.session.identity.public_key_text


def test_handler_failure_fails_over_to_another_agent() -> None:
    hub = make_hub(backoff_base_s=0.01)

    def boom(task: Task) -> None:
        raise ValueError("broken")

    agent(hub, "bad", handler=boom)
    agent(hub, "good")
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.advance(1.0)
    res = c.outcomes[tid]
    assert isinstance(res, Result) and res.sender == "good"
    assert c.outcome_count[tid] == 1


def test_all_attempts_failing_gives_one_agent_failed_error_with_the_reason() -> None:
    hub = make_hub(backoff_base_s=0.01)

    def boom(task: Task) -> None:
        raise ValueError("model exploded")

    agent(hub, "bad1", handler=boom)
    agent(hub, "bad2", handler=boom)
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.advance(5.0)
    err = c.outcomes[tid]
    assert isinstance(err, Error) and err.code == errors.AGENT_FAILED and "model exploded" in err.message
    assert c.outcome_count[tid] == 1


def test_agent_disconnect_mid_task_fails_over_and_late_result_is_dropped() -> None:
    hub = make_hub(backoff_base_s=0.01)
    slow = agent(hub, "slow", auto=False)
    agent(hub, "backup")
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    [held] = slow.held
    hub.disconnect(slow)
    hub.advance(1.0)
    res = c.outcomes[tid]
    assert isinstance(res, Result) and res.sender == "backup"
    # the first agent comes back and delivers its stale answer: dropped, never a second outcome
    slow2 = agent(hub, "slow", auto=False, ident=slow.session.identity)
    slow2.answer(held, True, {"late": True})
    hub.advance(1.0)
    assert c.outcome_count[tid] == 1
    assert hub.proto.counters["results_late"] == 1


def test_resubmitted_task_gets_the_original_outcome_without_running_twice() -> None:
    hub = make_hub()
    runs: list[str] = []

    def count(task: Task) -> str:
        runs.append(task.id)
        return "done"

    agent(hub, "a1", handler=count)
    ident = Identity.generate()
    c = controller(hub, "ctl", ident)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    first = c.inbox[-1].frame
    # the controller reconnects and resubmits with the same id (a fresh signature and timestamp)
    hub.disconnect(c)
    c2 = controller(hub, "ctl", ident)
    c2.submit("m", 1, task_id=tid)
    hub.run_until_idle()
    assert runs == [tid]
    assert c2.inbox[-1].frame == first


def test_outcome_for_a_disconnected_controller_is_kept_for_its_resubmission() -> None:
    hub = make_hub()
    a = agent(hub, "a1", auto=False)
    ident = Identity.generate()
    c = controller(hub, "ctl", ident)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    hub.disconnect(c)
    a.answer(a.held.popleft(), True, "while you were away")
    hub.run_until_idle()
    c2 = controller(hub, "ctl", ident)
    c2.submit("m", 1, task_id=tid)
    hub.run_until_idle()
    res = c2.outcomes[tid]
    assert isinstance(res, Result) and msgspec.json.decode(res.payload) == "while you were away"


def test_resubmission_while_running_is_absorbed() -> None:
    hub = make_hub()
    a = agent(hub, "a1", auto=False)
    c = controller(hub)
    tid = c.submit("m", 1)
    c.submit("m", 1, task_id=tid)
    hub.run_until_idle()
    assert len(a.held) == 1
    a.answer(a.held.popleft(), True, 2)
    hub.run_until_idle()
    assert c.outcome_count[tid] == 1


def test_silent_agent_is_evicted_after_its_lease_and_its_connection_closed() -> None:
    hub = make_hub(lease_s=10.0)
    quiet = agent(hub, "quiet")
    chatty = agent(hub, "chatty")
    for _ in range(4):
        hub.advance(4.0)
        chatty.heartbeat()
    assert quiet.closed == (CLOSE_LEASE_EXPIRED, "lease expired")
    assert chatty.closed is None
    assert hub.proto.connected_peers() == {"chatty": "agent"}


def test_an_agent_sending_results_keeps_its_lease_without_heartbeats_but_a_replayed_frame_does_not_renew_it() -> None:
    hub = make_hub(lease_s=10.0, attempt_timeout_s=100.0)
    busy = agent(hub, "busy", auto=False)
    replayer = agent(hub, "replayer", caps=["other"])
    c = controller(hub)
    beat = replayer.session.heartbeat_frame(hub.now)
    replayer.send(beat)
    for _ in range(4):  # 16 s without a heartbeat from busy, a result every 4 s
        hub.advance(4.0)
        c.submit("m", 1)
        hub.run_until_idle()
        busy.answer(busy.held.popleft())
        replayer.send(beat)  # the same heartbeat again: a replay, refused, renews nothing
        hub.run_until_idle()
    assert busy.closed is None
    assert replayer.closed == (CLOSE_LEASE_EXPIRED, "lease expired")
    assert hub.proto.connected_peers() == {"busy": "agent", "ctl": "controller"}
    hub.advance(10.5)  # silent from now on: the lease runs out after the last result
    assert busy.closed == (CLOSE_LEASE_EXPIRED, "lease expired")


def test_same_identity_reconnecting_replaces_the_old_connection() -> None:
    hub = make_hub()
    ident = Identity.generate()
    first = agent(hub, "a1", ident=ident)
    second = agent(hub, "a1", ident=ident)
    assert first.closed is not None and first.closed[0] == CLOSE_REPLACED
    assert second.session.state == READY


def test_deregister_closes_normally_and_fails_over() -> None:
    hub = make_hub(backoff_base_s=0.0)
    leaving = agent(hub, "leaving", auto=False)
    agent(hub, "staying")
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    leaving.send(leaving.session.deregister_frame(hub.now, "maintenance"))
    hub.advance(0.1)
    assert leaving.closed == (CLOSE_NORMAL, "deregistered")
    assert isinstance(c.outcomes[tid], Result) and c.outcomes[tid].sender == "staying"


def test_agents_can_call_other_agents() -> None:
    hub = make_hub()
    agent(hub, "worker", caps=["text.classify"])
    caller = agent(hub, "planner", caps=["plan"])
    tid = caller.submit("text.classify", {"text": "hi"})
    hub.run_until_idle()
    assert isinstance(caller.outcomes[tid], Result)


def test_drain_then_shutdown_ends_every_task_once() -> None:
    hub = make_hub()
    a = agent(hub, "a1", auto=False)
    c = controller(hub)
    t1 = c.submit("m", 1)
    hub.run_until_idle()
    hub._apply(hub.proto.begin_drain(hub.now, 5.0))
    hub.run_until_idle()
    assert any(isinstance(r.body, Goaway) for r in a.inbox)
    t2 = c.submit("m", 2)
    hub.run_until_idle()
    assert isinstance(c.outcomes[t2], Error) and c.outcomes[t2].code == errors.SHUTTING_DOWN
    hub._apply(hub.proto.shutdown(hub.now))
    hub.run_until_idle()
    err = c.outcomes.get(t1)
    assert isinstance(err, Error) and err.code == errors.SHUTTING_DOWN
    assert c.outcome_count[t1] == 1
    assert c.closed is not None and a.closed is not None
    assert hub.proto.router.tasks_in_flight == 0


def test_allowlist_admits_only_listed_keys() -> None:
    allowed = Identity.generate()
    proto = RouterProtocol(Identity.generate(), Router(), ProtocolConfig(allowlist=frozenset({allowed.public_key_text})))
    hub = InProcessHub(proto)
    ok = hub.connect(PeerSession(allowed, "a1", "agent", ["m"]))
    bad = hub.connect(PeerSession(Identity.generate(), "a2", "agent", ["m"]))
    assert ok.session.state == READY
    assert bad.closed is not None and bad.closed[1] == errors.NOT_ALLOWED
    assert proto.rejections == {errors.NOT_ALLOWED: 1}


@pytest.mark.parametrize("policy", ["every-hop", "edge"])
def test_both_verification_policies_route_and_agents_still_verify_end_to_end(policy: str) -> None:
    proto = RouterProtocol(Identity.generate(), Router(), ProtocolConfig(verify=policy))  # type: ignore[arg-type]
    hub = InProcessHub(proto)
    agent(hub, "a1")
    c = controller(hub)
    tid = c.submit("m", 1)
    hub.run_until_idle()
    assert isinstance(c.outcomes[tid], Result)


def test_in_process_demo_loses_nothing() -> None:
    lines: list[str] = []
    outcome = in_process_demo(tasks=12, seed=7, out=lines.append)
    assert outcome == {"result": 12, "no-agent": 1}
    assert any("flaky-3" in line and "failed" in line for line in lines)


def test_a_refused_task_ends_at_its_sender_with_its_task_id() -> None:
    hub = make_hub()
    agent(hub, "a1")
    c = controller(hub)
    # a task stamped two minutes in the past: refused as stale, and the refusal names the task
    tid, frame = c.session.task_frame("m", msgspec.Raw(b"1"), hub.now - 120.0)
    c.send(frame)
    hub.run_until_idle()
    err = c.outcomes[tid]
    assert isinstance(err, Error) and err.code == errors.STALE and err.method == "m"
    assert hub.proto.router.tasks_in_flight == 0


def test_frames_before_registration_are_capped_lower_than_after() -> None:
    proto = RouterProtocol(Identity.generate(), Router())
    hub = InProcessHub(proto)
    stranger = hub.connect(PeerSession(Identity.generate(), "x", "agent", ["m"]), register=False)
    big = b'{"pad":"' + b"a" * (70 * 1024) + b'"}'
    stranger.send(big)
    hub.run_until_idle()
    assert stranger.closed is not None and stranger.closed[0] == 1009
    assert proto.rejections == {errors.TOO_LARGE: 1}
    # once registered, the same size is within the 1 MiB limit (it is then refused for its shape, not its size)
    a = agent(hub, "a1")
    a.send(big)
    hub.run_until_idle()
    assert a.closed is None
    assert proto.rejections.keys() & {errors.MALFORMED, errors.INVALID_MESSAGE}


def test_a_flood_of_connections_from_one_source_is_rate_limited_and_its_memory_bounded() -> None:
    proto = RouterProtocol(Identity.generate(), Router(), ProtocolConfig(connect_rate_per_s=10.0, connect_burst=5.0, max_sources=3))
    now = 1000.0
    admitted = [proto.admit("10.0.0.1", now) for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    assert proto.rejections == {errors.RATE_LIMITED: 3}
    assert proto.admit("10.0.0.2", now)  # other sources are not affected
    assert proto.admit("10.0.0.1", now + 0.1)  # one token back after 0.1 s at 10/s
    for i in range(100):  # many sources: the table stays at its cap
        proto.admit(f"192.0.2.{i}", now)
    assert len(proto._sources) == 3


def test_a_requester_that_asks_gets_progress_notices_for_dispatch_and_retry() -> None:
    hub = make_hub(backoff_base_s=0.01)

    def boom(task: Task) -> None:
        raise ValueError("broken")

    agent(hub, "bad", handler=boom)
    agent(hub, "good")
    asks = hub.connect(PeerSession(Identity.generate(), "asks", "controller", progress=True))
    quiet = controller(hub, "quiet")
    tid = asks.submit("m", 1)
    other = quiet.submit("m", 2)
    hub.advance(1.0)
    notices = [r.body for r in asks.inbox if isinstance(r.body, Progress)]
    assert [(n.task_id, n.state, n.attempt) for n in notices] == [(tid, "dispatched", 1), (tid, "retried", 2)]
    assert [n.agent for n in notices] == ["bad", "good"] and all(n.method == "m" for n in notices)
    assert isinstance(asks.outcomes[tid], Result) and asks.outcome_count[tid] == 1
    assert not [r for r in quiet.inbox if isinstance(r.body, Progress)] and quiet.outcome_count[other] == 1


def test_a_task_asks_for_or_declines_progress_notices_whatever_the_registration_said() -> None:
    hub = make_hub()
    agent(hub, "a1")
    asks = hub.connect(PeerSession(Identity.generate(), "asks", "controller", progress=True))
    quiet = controller(hub, "quiet")
    wanted = quiet.submit("m", 1, progress=True)
    declined = asks.submit("m", 2, progress=False)
    as_registered = [quiet.submit("m", 3), asks.submit("m", 4)]
    hub.advance(1.0)
    seen = {r.body.task_id for ep in (asks, quiet) for r in ep.inbox if isinstance(r.body, Progress)}
    assert seen == {wanted, as_registered[1]}
    assert all(ep.outcome_count[t] == 1 for ep, t in ((quiet, wanted), (asks, declined), (quiet, as_registered[0]), (asks, as_registered[1])))
    assert b'"progress":true' in quiet.session.task_frame("m", payload(5), hub.now, progress=True)[1]
    assert b'"progress"' not in quiet.session.task_frame("m", payload(6), hub.now)[1]  # omitted unless set: the frames of peers that never set it are unchanged


def test_peers_may_not_send_progress_notices() -> None:
    hub = make_hub()
    c = controller(hub)
    body = Progress(v=PROTOCOL_VERSION, id="p1", sender="ctl", ts=hub.now, task_id="t", method="m", state="dispatched", agent="a", attempt=1)
    c.send(seal(c.session.identity, "ctl", body))
    hub.run_until_idle()
    assert any(isinstance(r.body, Error) and r.body.code == errors.INVALID_MESSAGE for r in c.inbox)


def test_a_peer_keeps_the_keys_of_many_signers_and_still_refuses_a_bad_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results signed by several agents in turn all verify from the key cache; a cached key does not spare a
    forged signature; past ``KEY_CACHE`` signers the cache starts over and keeps working."""
    import aicp.peer as peer_module

    monkeypatch.setattr(peer_module, "KEY_CACHE", 2)
    ctl = PeerSession(Identity.generate(), "ctl", "controller")
    agents = [PeerSession(Identity.generate(), f"a{i}", "agent") for i in range(3)]
    task = Task(v=PROTOCOL_VERSION, id="t1", sender="ctl", ts=1.0, method="m", payload=payload(1))
    frames = [a.result_frame(task, payload(i), 1.0) for i, a in enumerate(agents)]
    for _ in range(2):
        for i, f in enumerate(frames):
            got = ctl.receive(f, 1.0)
            assert isinstance(got.body, Result) and msgspec.json.decode(got.body.payload) == i
            assert got.key == agents[i].identity.public_key_text
    assert 1 <= len(ctl._keys) <= 2
    forged = seal(agents[1].identity, "a0", msgspec.json.decode(frames[0][frames[0].index(b'"body":') + 7 : -1], type=Result))
    forged = forged.replace(agents[1].identity.public_key_text.encode(), agents[0].identity.public_key_text.encode())
    ctl.receive(frames[0], 1.0)  # a0's key is cached now
    with pytest.raises(errors.VerifyError):
        ctl.receive(forged, 1.0)  # a0's key, a1's signature
