"""Lasting state across a router restart, in memory: what the core reports, and what ``restore`` makes of it.

A "restart" here is a new ``RouterProtocol`` (same router key, as with ``--key``) restored
from the ``Recorder`` snapshot of the old one. The SQLite driver and real processes are
tested in tests/live/test_state_live.py.
"""

from __future__ import annotations

import random

import msgspec
import pytest

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import Error, Result, Task
from aicp.peer import READY, PeerSession
from aicp.protocol import ProtocolConfig, RouterProtocol, task_key
from aicp.router import Router
from aicp.signing import Identity
from aicp.state import Binding, Recorder, Seen, Snapshot, StoredOutcome

ROUTER = Identity.generate()
WINDOW = 60.0


def hub_with(recorder: Recorder, snapshot: Snapshot | None = None, now: float = 1_000_000.0, **cfg: object) -> InProcessHub:
    proto = RouterProtocol(ROUTER, Router(strategy="round_robin", rng=random.Random(1)), ProtocolConfig(window_s=WINDOW, **cfg))  # type: ignore[arg-type]
    if snapshot is not None:
        proto.restore(snapshot, now)
    proto.store = recorder
    return InProcessHub(proto, now=now)


def restart(old: InProcessHub, recorder: Recorder, after_s: float = 1.0, **cfg: object) -> tuple[InProcessHub, Recorder]:
    """A new router from the old one's recorded state, ``after_s`` later; it records into a fresh Recorder."""
    now = old.now + after_s
    return hub_with(Recorder(), recorder.snapshot(now), now, **cfg), recorder


def connect(hub: InProcessHub, name: str, ident: Identity, role: str = "agent", runs: list[str] | None = None, auto: bool = True) -> Endpoint:
    def handler(task: Task) -> object:
        if runs is not None:
            runs.append(task.id)
        return {"echo": msgspec.json.decode(task.payload)}

    session = PeerSession(ident, name, role, ["m"] if role == "agent" else [], router_key=ROUTER.public_key_text)  # type: ignore[arg-type]
    return hub.connect(session, handler=handler if role == "agent" else None, auto=auto)


def refusal(ep: Endpoint) -> str:
    errs = [r.body.code for r in ep.inbox if isinstance(r.body, Error)]
    assert errs, "no error frame"
    return errs[-1]


def test_a_binding_survives_a_restart_so_another_key_for_the_id_is_refused() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    owner = Identity.generate()
    connect(hub, "a1", owner)
    assert rec.bindings == {"a1": Binding("a1", owner.public_key_text, "agent")}
    hub2, _ = restart(hub, rec)
    thief = connect(hub2, "a1", Identity.generate())
    assert refusal(thief) == errors.KEY_MISMATCH and thief.closed is not None
    assert connect(hub2, "a1", owner).session.state == READY
    # the role is part of the binding too
    as_controller = connect(hub2, "a1", owner, role="controller")
    assert refusal(as_controller) == errors.INVALID_MESSAGE


def test_a_resubmitted_task_gets_its_stored_outcome_verbatim_and_does_not_run_again() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    runs: list[str] = []
    connect(hub, "a1", Identity.generate(), runs=runs)
    ctl_key = Identity.generate()
    ctl = connect(hub, "ctl", ctl_key, role="controller")
    tid = ctl.submit("m", 7)
    hub.run_until_idle()
    first = ctl.inbox[-1].frame
    assert isinstance(ctl.outcomes[tid], Result) and runs == [tid]
    assert rec.outcomes[task_key("ctl", tid)].frame == first

    hub2, _ = restart(hub, rec, after_s=5.0)
    ctl2 = connect(hub2, "ctl", ctl_key, role="controller")
    ctl2.submit("m", 7, task_id=tid)
    hub2.run_until_idle()
    assert ctl2.inbox[-1].frame == first  # the exact signed bytes of the agent's result
    assert runs == [tid] and hub2.proto.counters["tasks_accepted"] == 0 and hub2.proto.counters["tasks_resubmitted"] == 1


def test_a_message_id_seen_before_the_restart_is_a_duplicate_after_it() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    ident = Identity.generate()
    ag = connect(hub, "a1", ident)
    beat = ag.session.heartbeat_frame(hub.now)
    ag.send(beat)
    hub.run_until_idle()
    assert not [r for r in ag.inbox if isinstance(r.body, Error)]

    hub2, _ = restart(hub, rec, after_s=10.0)
    ag2 = connect(hub2, "a1", ident)
    records = hub2.proto.store.records  # type: ignore[union-attr]
    ag2.send(beat)  # the captured frame, verbatim, on the sender's own new connection
    hub2.run_until_idle()
    assert refusal(ag2) == errors.DUPLICATE
    assert hub2.proto.rejections == {errors.DUPLICATE: 1}
    assert hub2.proto.store.records == records  # type: ignore[union-attr]  # a refusal records nothing
    ag2.heartbeat()  # a new id is fine
    hub2.run_until_idle()
    assert hub2.proto.rejections == {errors.DUPLICATE: 1}


def test_a_task_interrupted_by_the_restart_ends_once_with_shutting_down_and_never_runs_twice() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    runs: list[str] = []
    ag = connect(hub, "a1", Identity.generate(), runs=runs, auto=False)
    ctl_key = Identity.generate()
    ctl = connect(hub, "ctl", ctl_key, role="controller")
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    assert len(ag.held) == 1 and tid not in ctl.outcomes  # the router dies here

    hub2, _ = restart(hub, rec)
    connect(hub2, "a1", ag.session.identity, runs=runs)
    ctl2 = connect(hub2, "ctl", ctl_key, role="controller")
    ctl2.submit("m", 1, task_id=tid)
    hub2.run_until_idle()
    err = ctl2.outcomes[tid]
    assert isinstance(err, Error) and err.code == errors.SHUTTING_DOWN and err.task_id == tid
    assert runs == []
    frame = ctl2.inbox[-1].frame
    ctl2.submit("m", 1, task_id=tid)  # and again: the same stored outcome
    hub2.run_until_idle()
    assert ctl2.inbox[-1].frame == frame and ctl2.outcome_count[tid] == 2 and runs == []
    assert hub2.proto.store.outcomes[task_key("ctl", tid)].frame == frame  # type: ignore[union-attr]


def test_expired_entries_are_not_restored_and_the_window_bounds_what_is_kept() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    runs: list[str] = []
    connect(hub, "a1", Identity.generate(), runs=runs)
    ctl_key = Identity.generate()
    ctl = connect(hub, "ctl", ctl_key, role="controller")
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    later = hub.now + WINDOW + 1.0
    snap = rec.snapshot(later)
    assert snap.seen == [] and snap.outcomes == [] and len(snap.bindings) == 2  # bindings never expire
    hub2 = hub_with(Recorder(), snap, later)
    assert refusal(connect(hub2, "a1", Identity.generate())) == errors.KEY_MISMATCH  # bound before: still refused
    connect(hub2, "a2", Identity.generate(), runs=runs)
    ctl2 = connect(hub2, "ctl", ctl_key, role="controller")
    ctl2.submit("m", 1, task_id=tid)  # a fresh submission after the window: it runs again
    hub2.run_until_idle()
    assert isinstance(ctl2.outcomes[tid], Result) and runs == [tid, tid]


def test_restore_respects_the_caches_limits_and_keeps_the_newest() -> None:
    now = 5_000.0
    snap = Snapshot(
        bindings=[Binding(f"p{i}", Identity.generate().public_key_text, "agent") for i in range(5)],
        seen=[Seen("s", f"m{i}", now + i + 1) for i in range(5)],
        outcomes=[StoredOutcome(f"k{i}", b"x%d" % i, now + 10 - i) for i in range(5)],
    )
    proto = RouterProtocol(ROUTER, Router(), ProtocolConfig(max_peers=3, replay_cache_size=2, outcome_cache_size=2))
    proto.restore(snap, now)
    assert len(proto._peers) == 3
    assert len(proto._replay) == 2 and ("s", "m3") in proto._replay and ("s", "m4") in proto._replay  # the longest-lived
    kept = [proto._outcomes.get(f"k{i}", now) for i in range(5)]
    assert [o.frame if o is not None else None for o in kept] == [b"x0", b"x1", None, None, None]  # the newest two


@pytest.mark.parametrize("binding", [Binding("p", "ed25519:nope", "agent"), Binding("p", Identity.generate().public_key_text, "boss")])
def test_a_corrupt_binding_is_an_error_not_a_silently_free_id(binding: Binding) -> None:
    proto = RouterProtocol(ROUTER, Router())
    with pytest.raises(errors.LocalError, match="stored binding"):
        proto.restore(Snapshot(bindings=[binding]), 0.0)


def test_restore_after_the_first_connection_is_a_local_error() -> None:
    hub = hub_with(Recorder())
    connect(hub, "a1", Identity.generate())
    with pytest.raises(errors.LocalError):
        hub.proto.restore(Snapshot(), hub.now)


def test_records_round_trip_through_msgspec_for_any_backend() -> None:
    snap = Snapshot(bindings=[Binding("p", "ed25519:k", "agent")], seen=[Seen("s", "m", 1.5, True)], outcomes=[StoredOutcome("c\nt", b"\x00frame", 2.5)])
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot) == snap


def test_a_result_replayed_after_the_restart_changes_nothing_so_its_id_is_not_recorded() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    worker = Identity.generate()
    ag = connect(hub, "a1", worker, auto=False)
    ctl_key = Identity.generate()
    ctl = connect(hub, "ctl", ctl_key, role="controller")
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    result = ag.answer(ag.held.popleft(), True, "done")
    hub.run_until_idle()
    assert isinstance(ctl.outcomes[tid], Result)
    assert [s.msg_id for s in rec.seen_ids.values() if s.sender == "a1"] == []  # neither its registration nor its result

    hub2, _ = restart(hub, rec)
    ag2 = connect(hub2, "a1", worker)
    ctl2 = connect(hub2, "ctl", ctl_key, role="controller")
    ag2.send(result)  # replayed verbatim
    hub2.run_until_idle()
    assert hub2.proto.counters["results_forwarded"] == 0 and ctl2.outcome_count == {}
    assert hub2.proto.pending_tasks() == 0 and hub2.proto.router.stats.completed == 0


def test_after_the_restart_another_task_under_a_kept_id_is_an_id_conflict_and_assignees_are_remembered() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    worker, other = Identity.generate(), Identity.generate()
    ag = connect(hub, "a1", worker, auto=False)
    ctl_key = Identity.generate()
    ctl = connect(hub, "ctl", ctl_key, role="controller")
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    held = ag.held.popleft()
    ag.answer(held, True, "done")
    hub.run_until_idle()
    assert rec.outcomes[task_key("ctl", tid)].assignees == ("a1",)

    hub2, _ = restart(hub, rec)
    ag2 = connect(hub2, "a1", worker, auto=False)
    bystander = connect(hub2, "a2", other, auto=False)
    ctl2 = connect(hub2, "ctl", ctl_key, role="controller")
    ctl2.submit("m", 2, task_id=tid)  # another payload under the same id
    hub2.run_until_idle()
    assert refusal(ctl2) == errors.ID_CONFLICT
    ag2.answer(held, True, "again")  # a new result for the ended task, from the agent it went to: late
    bystander.answer(held, True, "me too")  # from an agent it never went to: not-assigned
    hub2.run_until_idle()
    assert hub2.proto.counters["results_late"] == 1 and refusal(bystander) == errors.NOT_ASSIGNED
    assert ctl2.outcome_count == {tid: 1}  # only the id-conflict refusal: nothing was forwarded


def test_a_peer_registering_again_or_connected_at_touch_connected_is_reported_seen() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    owner, ctl_key = Identity.generate(), Identity.generate()
    connect(hub, "a1", owner)
    assert rec.last_seen == {}  # a new binding is recorded by bind
    hub.advance(10.0)
    again = connect(hub, "a1", owner)  # the same key registers again (a restarted agent)
    assert again.session.state == READY and rec.last_seen == {"a1": hub.now}
    ephemeral = hub.connect(PeerSession(ctl_key, "controller-1", "controller", ephemeral=True, router_key=ROUTER.public_key_text))
    assert ephemeral.session.state == READY
    hub.advance(5.0)
    assert hub.proto.touch_connected(hub.now) == 1  # a1 only: an ephemeral id is freed by its own rule
    assert rec.last_seen == {"a1": hub.now}
    hub.disconnect(again)
    hub.advance(5.0)
    assert hub.proto.touch_connected(hub.now) == 0 and rec.last_seen["a1"] == hub.now - 5.0
