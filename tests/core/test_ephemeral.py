"""Ephemeral ids (``register`` with ``ephemeral: true``, docs/PROTOCOL.md §4.4): freed once the peer is gone.

A controller that made its id up for one run (``aicp submit`` without ``--id``,
``Controller(url)``) registers it as ephemeral. The router keeps that binding while the
peer is connected or has a task pending, and ``window_s`` after the later of its leaving
and its last outcome; then it frees the id (and tells the store). Chosen ids stay bound
for good, as before.
"""

from __future__ import annotations

import random

import pytest

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import Error, Result
from aicp.peer import READY, PeerSession
from aicp.protocol import ProtocolConfig, RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity
from aicp.state import Binding, Recorder, Snapshot

ROUTER = Identity.generate()
WINDOW = 60.0


def make_hub(recorder: Recorder | None = None, snapshot: Snapshot | None = None, now: float = 1_000_000.0, **cfg: object) -> InProcessHub:
    router = Router(RouterConfig(attempt_timeout_s=1000.0), strategy="round_robin", rng=random.Random(1))  # a held task may run for minutes
    proto = RouterProtocol(ROUTER, router, ProtocolConfig(window_s=WINDOW, **cfg))  # type: ignore[arg-type]
    if snapshot is not None:
        proto.restore(snapshot, now)
    proto.store = recorder
    return InProcessHub(proto, now=now)


def controller(hub: InProcessHub, name: str, ident: Identity, ephemeral: bool) -> Endpoint:
    return hub.connect(PeerSession(ident, name, "controller", router_key=ROUTER.public_key_text, ephemeral=ephemeral))


def agent(hub: InProcessHub, auto: bool = True) -> Endpoint:
    return hub.connect(PeerSession(Identity.generate(), "a1", "agent", ["m"], router_key=ROUTER.public_key_text), handler=lambda t: 1, auto=auto)


def advance(hub: InProcessHub, dt: float, ag: Endpoint | None = None) -> None:
    """Move time on by ``dt``, the agent (if any) heartbeating every 10 s so its lease holds."""
    while dt > 0:
        step = min(10.0, dt)
        if ag is not None:
            ag.heartbeat()
        hub.advance(step)
        dt -= step


def refusal(ep: Endpoint) -> str | None:
    errs = [r.body.code for r in ep.inbox if isinstance(r.body, Error)]
    return errs[-1] if errs else None


def one_shot(hub: InProcessHub, ephemeral: bool) -> Endpoint:
    """What ``aicp submit`` without ``--id`` does: a random id and key, one task, then gone."""
    ctl = controller(hub, f"controller-{random.getrandbits(32):08x}", Identity.generate(), ephemeral)
    assert ctl.session.state == READY, refusal(ctl)
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    assert isinstance(ctl.outcomes[tid], Result)
    hub.disconnect(ctl)
    return ctl


def test_one_shot_controllers_with_chosen_ids_stay_bound_until_the_table_is_full() -> None:
    """The problem: without ``ephemeral`` every one-shot id is bound for good, and the table fills up."""
    hub = make_hub(max_peers=21)
    ag = agent(hub)
    for _ in range(20):
        one_shot(hub, ephemeral=False)
        advance(hub, WINDOW, ag)
    assert hub.proto.bound_ids == 21
    late = controller(hub, "controller-late", Identity.generate(), ephemeral=False)
    assert refusal(late) == errors.OVERLOADED


def test_steady_churn_of_ephemeral_controllers_keeps_the_bindings_bounded() -> None:
    rec = Recorder()
    hub = make_hub(rec, max_peers=80)
    ag = agent(hub)
    peak = 0
    for i in range(400):  # one one-shot controller a second: about WINDOW of them are held at a time
        one_shot(hub, ephemeral=True)
        if i % 10 == 0:
            ag.heartbeat()
        hub.advance(1.0)
        peak = max(peak, hub.proto.bound_ids)
    assert WINDOW <= peak <= WINDOW + 2  # the agent and the controllers of the last window_s seconds, never 400
    assert len(rec.bindings) == hub.proto.bound_ids  # the store forgets them too
    advance(hub, WINDOW + 1, ag)
    assert hub.proto.bound_ids == 1 and list(rec.bindings) == ["a1"]


def test_a_chosen_id_stays_bound_after_its_peer_left() -> None:
    hub = make_hub()
    owner = Identity.generate()
    ctl = controller(hub, "ctl", owner, ephemeral=False)
    hub.disconnect(ctl)
    hub.advance(100 * WINDOW)
    thief = controller(hub, "ctl", Identity.generate(), ephemeral=False)
    assert refusal(thief) == errors.KEY_MISMATCH and thief.closed is not None
    thief = controller(hub, "ctl", Identity.generate(), ephemeral=True)  # the flag frees nothing that is bound for good
    assert refusal(thief) == errors.KEY_MISMATCH
    assert controller(hub, "ctl", owner, ephemeral=True).session.state == READY
    hub.advance(100 * WINDOW)
    assert refusal(controller(hub, "ctl", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH


def test_an_ephemeral_id_is_held_for_the_window_after_its_peer_left_then_freed() -> None:
    hub = make_hub()
    owner = Identity.generate()
    ctl = controller(hub, "c-1", owner, ephemeral=True)
    t_left = hub.now
    hub.disconnect(ctl)
    assert hub.proto.next_deadline() == t_left + WINDOW  # the core asks to be woken to free it
    hub.advance(WINDOW / 2)
    thief = controller(hub, "c-1", Identity.generate(), ephemeral=True)
    assert refusal(thief) == errors.KEY_MISMATCH
    back = controller(hub, "c-1", owner, ephemeral=True)  # the same key within the window: it is the same controller
    assert back.session.state == READY
    hub.advance(10 * WINDOW)  # connected: held however long
    assert refusal(controller(hub, "c-1", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    hub.disconnect(back)
    hub.advance(WINDOW - 1)
    assert hub.proto.bound_ids == 1
    hub.advance(1)
    assert hub.proto.bound_ids == 0 and hub.proto.next_deadline() is None
    other = controller(hub, "c-1", Identity.generate(), ephemeral=True)  # freed: a new binding
    assert other.session.state == READY


def test_a_deregistered_ephemeral_controller_is_freed_too() -> None:
    hub = make_hub()
    ctl = controller(hub, "c-1", Identity.generate(), ephemeral=True)
    ctl.send(ctl.session.deregister_frame(hub.now))
    hub.run_until_idle()
    assert ctl.closed is not None
    hub.advance(WINDOW)
    assert hub.proto.bound_ids == 0


def test_an_ephemeral_id_is_held_while_its_task_runs_and_a_window_after_its_outcome() -> None:
    """Its outcome is kept for resubmission for ``window_s``: the id must stay its owner's that long."""
    hub = make_hub()
    ag = agent(hub, auto=False)
    owner = Identity.generate()
    ctl = controller(hub, "c-1", owner, ephemeral=True)
    tid = ctl.submit("m", 1, timeout_ms=10 * WINDOW * 1000)
    hub.run_until_idle()
    hub.disconnect(ctl)
    advance(hub, 3 * WINDOW, ag)  # the task still runs: the id stays bound
    assert refusal(controller(hub, "c-1", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    ag.answer(ag.held.popleft(), obj=7)
    hub.run_until_idle()
    advance(hub, WINDOW - 1, ag)
    assert refusal(controller(hub, "c-1", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    back = controller(hub, "c-1", owner, ephemeral=True)
    back.submit("m", 1, task_id=tid)  # collects the stored outcome
    hub.run_until_idle()
    assert isinstance(back.outcomes[tid], Result)
    hub.disconnect(back)
    advance(hub, WINDOW, ag)
    assert hub.proto.bound_ids == 1  # the agent only


def test_only_a_controller_registers_an_ephemeral_id() -> None:
    hub = make_hub()
    ag = hub.connect(PeerSession(Identity.generate(), "a1", "agent", ["m"], router_key=ROUTER.public_key_text, ephemeral=True))
    assert refusal(ag) == errors.INVALID_MESSAGE and ag.closed is not None
    assert hub.proto.bound_ids == 0


def test_the_flag_of_the_first_registration_decides() -> None:
    hub = make_hub()
    owner = Identity.generate()
    hub.disconnect(controller(hub, "c-1", owner, ephemeral=True))
    hub.disconnect(controller(hub, "c-1", owner, ephemeral=False))  # does not make it permanent
    hub.advance(WINDOW)
    assert hub.proto.bound_ids == 0


def test_a_restart_keeps_the_rules_ephemeral_ids_are_held_a_window_then_unbound() -> None:
    rec = Recorder()
    hub = make_hub(rec)
    chosen, eph = Identity.generate(), Identity.generate()
    controller(hub, "chosen", chosen, ephemeral=False)
    controller(hub, "eph", eph, ephemeral=True)  # still connected when the router stops
    assert rec.bindings["eph"] == Binding("eph", eph.public_key_text, "controller", ephemeral=True)
    now = hub.now + 5.0
    rec2 = Recorder()
    hub2 = make_hub(rec2, rec.snapshot(now), now)
    assert hub2.proto.next_deadline() == now + WINDOW
    assert refusal(controller(hub2, "eph", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    rec2.bindings = dict(rec.bindings)  # the same store, as a file would be
    hub2.proto.store = rec2
    hub2.disconnect(controller(hub2, "eph", eph, ephemeral=True))  # its owner, back within the window
    hub2.advance(WINDOW)
    assert list(rec2.bindings) == ["chosen"] and hub2.proto.bound_ids == 1  # unbound in the store too
    assert refusal(controller(hub2, "chosen", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    assert controller(hub2, "eph", Identity.generate(), ephemeral=True).session.state == READY


def test_a_restored_ephemeral_id_is_held_as_long_as_its_stored_outcome() -> None:
    rec = Recorder()
    hub = make_hub(rec)
    agent(hub)
    owner = Identity.generate()
    ctl = controller(hub, "eph", owner, ephemeral=True)
    tid = ctl.submit("m", 1)
    hub.run_until_idle()
    hub.disconnect(ctl)
    now = hub.now + 1.0
    snap = rec.snapshot(now)
    # pretend the outcome outlives the restart's window (a longer window before the restart)
    snap.outcomes = [type(o)(o.key, o.frame, now + 3 * WINDOW, o.fingerprint, o.assignees) for o in snap.outcomes]
    hub2 = make_hub(Recorder(), snap, now)
    hub2.advance(2 * WINDOW)
    assert refusal(controller(hub2, "eph", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    back = controller(hub2, "eph", owner, ephemeral=True)
    back.submit("m", 1, task_id=tid)
    hub2.run_until_idle()
    assert isinstance(back.outcomes[tid], Result)


def test_a_stored_ephemeral_binding_of_an_agent_is_refused_at_restore() -> None:
    proto = RouterProtocol(ROUTER, Router(), ProtocolConfig(window_s=WINDOW))
    bad = Binding("a1", Identity.generate().public_key_text, "agent", ephemeral=True)
    with pytest.raises(errors.LocalError):
        proto.restore(Snapshot(bindings=[bad]), 1_000_000.0)


def test_a_learned_ephemeral_binding_is_freed_here_without_unbinding_it_from_the_shared_store() -> None:
    """Cluster mode: the router that made the binding removes it from the shared store, not one that learned it."""
    rec = Recorder()
    hub = make_hub(rec)
    other = Identity.generate()
    hub.proto.learn_binding(Binding("eph", other.public_key_text, "controller", ephemeral=True), hub.now)
    assert refusal(controller(hub, "eph", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    hub.advance(WINDOW)
    assert hub.proto.bound_ids == 0 and rec.records == 0
    # one registered here is this router's: freeing it is reported, and a delete by another router is undone
    mine = Identity.generate()
    ctl = controller(hub, "eph2", mine, ephemeral=True)
    assert rec.bindings["eph2"].ephemeral
    del rec.bindings["eph2"]  # another router freed its copy and deleted the shared entry
    hub.proto.binding_dropped("eph2", hub.now)
    assert rec.bindings["eph2"] == Binding("eph2", mine.public_key_text, "controller", ephemeral=True)
    hub.disconnect(ctl)
    hub.advance(WINDOW)
    assert "eph2" not in rec.bindings
    hub.proto.binding_dropped("eph2", hub.now)  # freed here too: nothing to restore
    assert "eph2" not in rec.bindings


class SharedBucket:
    """A model of the JetStream bindings bucket several routers share: ``create`` (first wins),
    a purge only with the stored key, and every change told to every router, as the watcher does.

    Each router's sink only queues (a sink must not call back into the core); ``flush`` applies the queues.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Binding] = {}
        self.hubs: list[InProcessHub] = []
        self.queues: list[list[tuple[str, Binding]]] = []

    def join(self, hub: InProcessHub) -> None:
        queue: list[tuple[str, Binding]] = []

        class Sink(Recorder):
            def bind(self, binding: Binding) -> None:
                queue.append(("bind", binding))

            def unbind(self, binding: Binding) -> None:
                queue.append(("unbind", binding))

        hub.proto.store = Sink()
        self.hubs.append(hub)
        self.queues.append(queue)

    def flush(self) -> None:
        for writer, queue in zip(self.hubs, self.queues, strict=True):
            while queue:
                op, b = queue.pop(0)
                stored = self.entries.get(b.peer_id)
                if op == "bind" and stored is not None and stored.key != b.key:  # create refused: the writer learns the winner
                    writer._apply(writer.proto.learn_binding(stored, writer.now))
                    writer.run_until_idle()
                elif op == "bind" and stored is None:
                    self.entries[b.peer_id] = b
                    for hub in self.hubs:
                        hub._apply(hub.proto.learn_binding(b, hub.now))
                elif op == "unbind" and self.entries.get(b.peer_id, None) == b:
                    del self.entries[b.peer_id]
                    for hub in self.hubs:
                        hub.proto.binding_dropped(b.peer_id, hub.now)


def test_in_a_cluster_an_ephemeral_id_stays_bound_while_any_router_holds_it() -> None:
    bucket = SharedBucket()
    a, b = make_hub(), make_hub()
    bucket.join(a)
    bucket.join(b)

    def both(dt: float) -> None:
        a.advance(dt)
        b.advance(dt)
        bucket.flush()

    owner = Identity.generate()
    a.disconnect(controller(a, "c-1", owner, ephemeral=True))  # it registered at A, then moved to B
    bucket.flush()
    at_b = controller(b, "c-1", owner, ephemeral=True)
    assert at_b.session.state == READY
    both(WINDOW)  # A frees its copy and purges the entry; B still holds it, and writes it again
    assert a.proto.bound_ids == 1 and bucket.entries["c-1"].key == owner.public_key_text  # A learned it again
    assert refusal(controller(a, "c-1", Identity.generate(), ephemeral=True)) == errors.KEY_MISMATCH
    both(5 * WINDOW)  # A has forgotten its learned copy by now, but the entry stays while B holds the id
    assert "c-1" in bucket.entries
    thief = controller(a, "c-1", Identity.generate(), ephemeral=True)  # A binds it locally, for a round trip ...
    bucket.flush()
    assert thief.closed is not None and thief.closed[1] == errors.KEY_MISMATCH  # ... until the bucket refuses it
    assert at_b.closed is None and bucket.entries["c-1"].key == owner.public_key_text
    b.disconnect(at_b)
    both(WINDOW)
    both(WINDOW)
    assert bucket.entries == {} and a.proto.bound_ids == b.proto.bound_ids == 0
    assert controller(a, "c-1", Identity.generate(), ephemeral=True).session.state == READY  # free everywhere
