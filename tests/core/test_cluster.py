"""The cluster core (aicp.cluster) with three routers wired in memory and a hand-stepped clock."""

from __future__ import annotations

import pytest
from cluster_harness import ClusterHarness

from aicp import errors
from aicp.cluster import ClusterConfig, ClusterNode, candidate_id
from aicp.messages import Error, Result, Task, decode_body, decode_frame, payload
from aicp.peer import PeerSession
from aicp.protocol import Forward, ProtocolConfig, RouterProtocol, task_fingerprint
from aicp.router import Router
from aicp.signing import Identity, decode_public_key, decode_signature, verify


def settle(c: ClusterHarness) -> None:
    c.advance(0.2)  # a few summaries each way


def test_task_submitted_at_a_runs_at_b_and_the_signed_result_comes_back_verbatim() -> None:
    c = ClusterHarness(["a", "b", "c"])
    agent = c.agent("b", "agent-b", ["echo"])
    ctl = c.controller("a")
    settle(c)
    tid = ctl.submit("echo", {"x": 1})
    c.pump()
    body = ctl.outcomes[tid]
    assert isinstance(body, Result) and body.ok and body.sender == "agent-b"
    assert ctl.outcome_count[tid] == 1
    # The frame the controller verified is byte for byte the one the agent signed and sent.
    sent = [rec for rec in agent.inbox if isinstance(rec.body, Task)]
    assert len(sent) == 1
    got = ctl.inbox[-1]
    assert got.key == agent.session.identity.public_key_text
    frame = decode_frame(got.frame)
    verify(decode_public_key(frame.key), frame.body, decode_signature(frame.sig))
    assert c.nodes["a"].counters["tasks_forwarded_out"] == 1 and c.nodes["b"].counters["tasks_forwarded_in"] == 1
    assert c.hubs["a"].proto.router.stats.completed == 1


def test_forwards_carry_what_the_sender_read_and_the_receiver_takes_them_without_decoding_again() -> None:
    c = ClusterHarness(["a", "b"], strategy="round_robin")

    def fail_odd(task: Task) -> object:
        if bytes(task.payload) == b'{"n":1}':
            raise RuntimeError("no")
        return {"ok": True}

    c.agent("b", "agent-b", ["echo"], handler=fail_odd)
    ctl = c.controller("a")
    settle(c)
    sent: list[Forward] = []
    apply = c.apply
    c.apply = lambda name, outs: (sent.extend(o for o in outs if isinstance(o, Forward)), apply(name, outs))[1]  # type: ignore[method-assign]
    good, bad = ctl.submit("echo", {"n": 0}), ctl.submit("echo", {"n": 1})
    c.advance(1.0)  # the failed one is retried after its backoff
    tasks = [f for f in sent if f.kind == "task"]
    assert [(f.router, f.method) for f in tasks[:2]] == [("b", "echo"), ("b", "echo")]
    assert {f.fingerprint for f in tasks} == {task_fingerprint(decode_body(decode_frame(f.data).body)) for f in tasks}  # type: ignore[arg-type]
    outcomes = {f.key.split("\n")[1]: f for f in sent if f.kind == "outcome"}
    assert outcomes[good].ok and not outcomes[bad].ok  # only the verified successful result is marked
    assert isinstance(ctl.outcomes[good], Result) and ctl.outcomes[good].ok
    # The failed attempt is decoded at the owner and retried there (b is the only router with an agent: it fails again).
    assert isinstance(ctl.outcomes[bad], Error) and ctl.outcomes[bad].code == errors.AGENT_FAILED
    assert ctl.outcome_count[good] == ctl.outcome_count[bad] == 1
    # A router that says nothing about the frame (no method, no fingerprint) decodes it: same task, same one outcome.
    sent.clear()
    tid, frame = ctl.session.task_frame("echo", payload({"n": 2}), c.now)
    c.apply("b", c.nodes["b"].task_received("a", frame, 1.0, c.now, "c1\nnot-this-id", "", b""))
    c.pump()
    done = [f for f in sent if f.kind == "outcome"]
    assert [(f.key, f.ok) for f in done] == [("c1\n" + tid, True)]


def test_least_loaded_prefers_a_free_local_agent_and_overflows_to_the_idlest_router() -> None:
    c = ClusterHarness(["a", "b", "c"])
    local = c.agent("a", "agent-a", ["work"], auto=False)
    busy_b = c.agent("b", "agent-b", ["work"], auto=False)
    free_c = c.agent("c", "agent-c1", ["work"], auto=False, concurrency=4)
    ctl_b = c.controller("b", "cb")
    ctl_b.submit("work", {})  # agent-b is now busy with b's own task
    ctl = c.controller("a")
    settle(c)
    ctl.submit("work", {})
    c.pump()
    assert len(local.held) == 1 and len(free_c.held) == 0  # local and free: stays local
    ctl.submit("work", {})
    c.pump()
    assert len(free_c.held) == 1 and len(busy_b.held) == 1  # local full: the router with free slots


def test_a_forwarded_task_is_never_forwarded_again() -> None:
    c = ClusterHarness(["a", "b", "c"])
    c.agent("c", "agent-c", ["echo"])
    settle(c)
    assert c.hubs["b"].proto.router.registry.agents_with("echo")  # b knows c's capacity ...
    session = PeerSession(Identity.generate(), "ctl", "controller")
    _, frame = session.task_frame("echo", payload({}), c.now)
    out = c.nodes["b"].task_received("a", frame, 1.0, c.now)
    # ... but a task a forwarded to b ends at b (no local agent) and goes back to its owner, not on to c.
    assert [type(o).__name__ for o in out] == ["Forward"]
    fwd = out[0]
    assert isinstance(fwd, Forward) and fwd.kind == "outcome" and fwd.router == "a"
    body = decode_body(decode_frame(fwd.data).body)
    assert isinstance(body, Error) and body.code == errors.NO_AGENT


def test_remote_agent_failure_is_retried_elsewhere_by_the_owner() -> None:
    c = ClusterHarness(["a", "b", "c"], strategy="round_robin")

    def boom(task: Task) -> object:
        raise RuntimeError("no")

    c.agent("b", "agent-b", ["echo"], handler=boom)
    c.agent("c", "agent-c", ["echo"])
    ctl = c.controller("a")
    settle(c)
    outcomes = [ctl.submit("echo", {}) for _ in range(4)]
    c.pump()
    c.advance(1.0)
    for tid in outcomes:
        body = ctl.outcomes[tid]
        assert isinstance(body, Result) and body.ok and body.sender == "agent-c", body
        assert ctl.outcome_count[tid] == 1
    assert c.hubs["a"].proto.router.stats.retries >= 1


def test_owner_fails_over_when_the_remote_router_goes_silent_and_drops_its_late_result() -> None:
    c = ClusterHarness(["a", "b", "c"])
    agent_b = c.agent("b", "agent-b", ["echo"], auto=False)
    ctl = c.controller("a")
    settle(c)
    tid = ctl.submit("echo", {})
    c.pump()
    assert len(agent_b.held) == 1  # the only capable agent, at b
    c.agent("c", "agent-c", ["echo"])  # capacity appears at c
    c.cut.add("b")  # b is partitioned from the other routers: a stops hearing it
    c.advance(0.6)  # > peer_timeout_s: a loses b, the task fails over to c
    body = ctl.outcomes[tid]
    assert isinstance(body, Result) and body.sender == "agent-c"
    # b's agent answers after all; b sends the outcome once the partition heals: late, dropped.
    c.cut.clear()
    agent_b.answer(agent_b.held.popleft(), True, {"late": True})
    c.advance(0.3)
    assert ctl.outcome_count[tid] == 1
    assert c.hubs["a"].proto.counters["results_late"] >= 1


def test_no_outcome_from_the_remote_router_ends_in_one_coded_error_at_the_owner() -> None:
    c = ClusterHarness(["a", "b"])
    agent_b = c.agent("b", "agent-b", ["echo"], auto=False)
    ctl = c.controller("a")
    settle(c)
    tid = ctl.submit("echo", {}, timeout_ms=300.0)
    c.pump()
    assert len(agent_b.held) == 1
    c.crash("b")
    c.advance(2.0)
    body = ctl.outcomes[tid]
    assert isinstance(body, Error) and body.code in (errors.AGENT_FAILED, errors.TIMEOUT)
    assert ctl.outcome_count[tid] == 1
    assert len(c.hubs["a"].proto.router._tasks) == 0


def test_a_partitioned_router_routes_locally_and_heals() -> None:
    c = ClusterHarness(["a", "b"])
    c.agent("a", "agent-a", ["local"])
    c.agent("b", "agent-b", ["remote"])
    ctl = c.controller("a")
    settle(c)
    c.cut.add("a")
    c.advance(0.6)
    assert c.nodes["a"].live_routers() == []
    t1, t2 = ctl.submit("local", {}), ctl.submit("remote", {})
    c.pump()
    assert isinstance(ctl.outcomes[t1], Result)
    e = ctl.outcomes[t2]
    assert isinstance(e, Error) and e.code == errors.NO_AGENT
    c.cut.clear()
    c.advance(0.2)
    assert c.nodes["a"].live_routers() == ["b"]
    t3 = ctl.submit("remote", {})
    c.pump()
    assert isinstance(ctl.outcomes[t3], Result)


def test_controller_that_moves_gets_the_task_running_at_a_third_router_once() -> None:
    c = ClusterHarness(["a", "b", "c"])
    agent_b = c.agent("b", "agent-b", ["echo"], auto=False)
    ident = Identity.generate()
    ctl_a = c.controller("a", "mover", ident)
    settle(c)
    tid = ctl_a.submit("echo", {"n": 1}, task_id="t-1")
    c.pump()
    assert len(agent_b.held) == 1
    c.crash("a")  # the owner dies; the controller reconnects to c and re-sends the same id
    ctl_c = c.controller("c", "mover", ident)
    ctl_c.submit("echo", {"n": 1}, task_id="t-1")
    c.pump()
    assert len(agent_b.held) == 1  # adopted, not run a second time
    agent_b.answer(agent_b.held.popleft(), True, {"done": 1})
    c.pump()
    body = ctl_c.outcomes[tid]
    assert isinstance(body, Result) and body.ok
    assert ctl_c.outcome_count[tid] == 1


def test_exactly_one_outcome_per_task_under_churn() -> None:
    """Many tasks from every router while routers are cut off and agents come and go: one outcome each."""
    c = ClusterHarness(["a", "b", "c"], strategy="least_loaded")
    for r in "abc":
        c.agent(r, f"agent-{r}1", ["echo"], concurrency=2)
    ctls = {r: c.controller(r, f"ctl-{r}") for r in "abc"}
    settle(c)
    submitted: dict[str, list[str]] = {r: [] for r in "abc"}
    for step in range(60):
        for r in "abc":
            submitted[r].append(ctls[r].submit("echo", {"i": step}, timeout_ms=2000.0))
        if step == 20:
            c.cut.add("b")
        if step == 35:
            c.cut.clear()
        if step == 40:
            c.hubs["c"].disconnect(next(ep for ep in c.hubs["c"].endpoints.values() if ep.session.peer_id == "agent-c1"))
        c.advance(0.02)
    c.advance(5.0)
    for r in "abc":
        for tid in submitted[r]:
            assert ctls[r].outcome_count.get(tid) == 1, (r, tid)
        assert len(c.hubs[r].proto.router._tasks) == 0
        assert c.hubs[r].proto.pending_tasks() == 0


def test_bad_or_foreign_summaries_are_ignored() -> None:
    proto = RouterProtocol(Identity.generate(), Router(), ProtocolConfig(router_id="a"))
    node = ClusterNode(proto, ClusterConfig())
    assert node.summary_received(b"\x00garbage", 1.0) == []
    assert node.counters["summaries_bad"] == 1
    with pytest.raises(errors.LocalError):
        ClusterNode(RouterProtocol(Identity.generate(), Router(), ProtocolConfig(router_id="x~y")))


def test_a_summary_makes_one_remote_candidate_per_capability_with_its_load() -> None:
    c = ClusterHarness(["a", "b"])
    c.agent("b", "b1", ["m1", "m2"], auto=False, concurrency=3)
    c.agent("b", "b2", ["m1"], auto=False)
    ctl_b = c.controller("b", "cb")
    ctl_b.submit("m1", {})
    settle(c)
    reg = c.hubs["a"].proto.router.registry
    m1 = reg.get(candidate_id("b", "m1"))
    m2 = reg.get(candidate_id("b", "m2"))
    router_a = c.hubs["a"].proto.router
    assert m1 is not None and router_a.is_remote(m1.agent_id) and m1.concurrency == 4 and m1.in_flight == 1
    assert m2 is not None and m2.concurrency == 3 and m2.in_flight == 1  # b1's slots serve both methods
    assert router_a.remote_ids["m1"] == [candidate_id("b", "m1")]
    assert router_a.agents_by_status()["active"] == 0  # other routers' capacity is no agent here
    # the id cannot be registered by a real peer: "~" is not allowed in ids
    ep = c.connect("a", PeerSession(Identity.generate(), candidate_id("b", "m1"), "agent", ["m1"]))
    assert ep.closed is not None and c.hubs["a"].proto.rejections.get(errors.INVALID_MESSAGE) == 1
    assert c.hubs["a"].proto.connected_peers().get(candidate_id("b", "m1")) is None


def test_a_draining_router_takes_no_new_tasks_but_finishes_the_ones_it_has() -> None:
    c = ClusterHarness(["a", "b"])
    agent_b = c.agent("b", "agent-b", ["echo"], auto=False)
    ctl = c.controller("a")
    settle(c)
    first = ctl.submit("echo", {})
    c.pump()
    assert len(agent_b.held) == 1
    c.hubs["b"].proto.begin_drain(c.now, 10.0)
    c.advance(0.1)  # b's summary now says draining
    second = ctl.submit("echo", {})
    c.pump()
    assert isinstance(ctl.outcomes[second], Error) and ctl.outcomes[second].code == errors.NO_AGENT
    agent_b.answer(agent_b.held.popleft(), True, {"ok": 1})
    c.pump()
    assert isinstance(ctl.outcomes[first], Result) and ctl.outcome_count[first] == 1


def test_a_progress_notice_for_a_cross_router_dispatch_names_the_router() -> None:
    from aicp.messages import Progress

    c = ClusterHarness(["a", "b"])
    c.agent("b", "agent-b", ["echo"])
    ctl = c.connect("a", PeerSession(Identity.generate(), "watcher", "controller", progress=True))
    settle(c)
    tid = ctl.submit("echo", {})
    c.pump()
    notices = [rec.body for rec in ctl.inbox if isinstance(rec.body, Progress)]
    assert ctl.rejected == [] and len(notices) == 1
    assert notices[0].agent == "router:b" and notices[0].task_id == tid
    assert isinstance(ctl.outcomes[tid], Result)
