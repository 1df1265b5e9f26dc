"""``RouterProtocol.learn_binding``: a binding another router of the cluster stored wins over a local one.

The JetStream driver (aicp.live.store_jetstream) calls it for every binding it sees in
the shared bucket; real routers sharing a real nats-server are in tests/live/test_store_jetstream.py.
"""

from __future__ import annotations

import pytest
from test_state import connect, hub_with, refusal

from aicp import errors
from aicp.peer import READY
from aicp.registry import Status
from aicp.signing import Identity
from aicp.state import Binding, Recorder


def test_a_binding_learned_from_another_router_refuses_another_key_here() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    owner = Identity.generate()
    assert hub.proto.learn_binding(Binding("a1", owner.public_key_text, "agent"), hub.now) == []
    assert rec.bindings == {}  # stored by the other router already: not written again
    thief = connect(hub, "a1", Identity.generate())
    assert refusal(thief) == errors.KEY_MISMATCH
    assert connect(hub, "a1", owner).session.state == READY
    # the same binding again changes nothing
    assert hub.proto.learn_binding(Binding("a1", owner.public_key_text, "agent"), hub.now) == []


def test_a_local_binding_that_lost_the_race_is_replaced_and_its_agent_closed() -> None:
    rec = Recorder()
    hub = hub_with(rec)
    local = Identity.generate()
    ep = connect(hub, "a1", local)
    assert ep.session.state == READY and "a1" in rec.bindings
    winner = Identity.generate()
    out = hub.proto.learn_binding(Binding("a1", winner.public_key_text, "agent"), hub.now)
    hub._apply(out)
    hub.run_until_idle()
    assert ep.closed is not None and ep.closed[1] == errors.KEY_MISMATCH
    assert hub.proto.router.registry.agents["a1"].status == Status.DEAD
    assert hub.proto.rejections[errors.KEY_MISMATCH] == 1
    # now the winner's key is the one bound here
    assert refusal(connect(hub, "a1", local)) == errors.KEY_MISMATCH
    assert connect(hub, "a1", winner).session.state == READY


def test_a_shared_binding_with_a_bad_key_or_role_is_refused() -> None:
    hub = hub_with(Recorder())
    with pytest.raises(errors.LocalError):
        hub.proto.learn_binding(Binding("a1", "ed25519:nonsense", "agent"), hub.now)
    with pytest.raises(errors.LocalError):
        hub.proto.learn_binding(Binding("a1", Identity.generate().public_key_text, "admin"), hub.now)
