"""The live driver keeps a timer armed for an earlier deadline (aicp.live.server ``_rearm``): on_timer before anything is due must do nothing."""

from __future__ import annotations

import random

from aicp.messages import payload
from aicp.peer import PeerSession
from aicp.protocol import RouterProtocol, Send
from aicp.router import Router, RouterConfig
from aicp.signing import Identity


def test_on_timer_before_the_deadline_changes_nothing_and_at_it_acts() -> None:
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(), "round_robin", random.Random(1)))
    agent = PeerSession(Identity.generate(), "agent-1", "agent", ["m"])
    ctl = PeerSession(Identity.generate(), "ctl-1", "controller")
    now = 1.7e9
    for conn, peer in ((1, agent), (2, ctl)):
        [challenge] = proto.connection_made(conn, now)
        assert isinstance(challenge, Send)
        peer.receive(challenge.data, now)
        proto.frame_received(conn, peer.register_frame(now), now)
    _, frame = ctl.task_frame("m", payload({"x": 1}), now, timeout_ms=5000)
    out = proto.frame_received(2, frame, now)
    assert [o.conn for o in out if isinstance(o, Send)] == [1]  # dispatched to the agent
    deadline = proto.next_deadline()
    assert deadline is not None and deadline > now
    for early in (now + 0.001, (now + deadline) / 2, deadline - 0.001):
        assert proto.on_timer(early) == []
        assert proto.next_deadline() == deadline
        assert proto.pending_tasks() == 1
    assert proto.on_timer(deadline + 0.001) != []  # the attempt times out: retried or failed, never silent
