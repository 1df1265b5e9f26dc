"""A stateful test of the whole sans-I/O router (RouterProtocol) through the in-process hub.

Agents connect, reconnect on a new connection (replacing the old one), drop,
heartbeat or fall silent, and answer their tasks ok or failed, late, or after
they reconnected. The controller submits, replays the exact task frame,
resubmits the same id freshly signed (the same task, or a different payload under
the same id, which must be refused with ``id-conflict``), and reconnects. Time jumps forward.

Invariants after every step: no task ever reaches the controller with two
different outcomes (refusals, which end nothing, aside), and the router's books balance (accepted = pending + ended,
and its pending tasks are the routing core's). At the end, past every deadline,
the controller reconnects and resubmits everything: each task has exactly one
outcome.
"""

from __future__ import annotations

import random

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import Error, Result, Task
from aicp.peer import PeerSession
from aicp.protocol import ProtocolConfig, RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

CAPS = {"a0": ["m1"], "a1": ["m1", "m2"], "a2": ["m2"]}
KEYS = {name: Identity(bytes([10 + i]) * 32) for i, name in enumerate([*CAPS, "c1"])}
RCFG = RouterConfig(heartbeat_s=1.0, lease_s=4.0, attempt_timeout_s=1.5, default_deadline_s=6.0, max_deadline_s=8.0)
PCFG = ProtocolConfig(window_s=1_000.0)  # the whole run fits in one window: resubmissions see the stored outcome
T0 = 1_000_000.0


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.proto: RouterProtocol
        self.hub: InProcessHub
        self.agents: dict[str, Endpoint] = {}
        self.seen_tasks: dict[str, list[Task]] = {name: [] for name in CAPS}
        self.ctl: Endpoint
        self.ctl_endpoints: list[Endpoint] = []
        self.tasks: dict[str, tuple[str, bytes, bytes]] = {}  # task id -> (method, payload, original frame)
        self.conflicts = 0
        self.seq = 0

    @initialize(seed=st.integers(0, 2**16), strategy=st.sampled_from(["round_robin", "random", "least_loaded", "power_of_two"]))
    def start(self, seed: int, strategy: str) -> None:
        self.proto = RouterProtocol(Identity(b"\x63" * 32), Router(RCFG, strategy, random.Random(seed)), PCFG)
        self.hub = InProcessHub(self.proto, now=T0)
        self.connect_ctl()

    # ---------------------------------------------------------------- helpers
    def connect_ctl(self) -> None:
        self.ctl = self.hub.connect(PeerSession(KEYS["c1"], "c1", "controller"))
        self.ctl_endpoints.append(self.ctl)

    def collect(self) -> None:
        for name, ep in self.agents.items():
            for rec in ep.inbox:
                if isinstance(rec.body, Task) and rec.body not in self.seen_tasks[name]:
                    self.seen_tasks[name].append(rec.body)

    def outcomes(self) -> dict[str, set[bytes]]:
        got: dict[str, set[bytes]] = {}
        for ep in self.ctl_endpoints:
            for rec in ep.inbox:
                if isinstance(rec.body, Error) and rec.body.code == errors.ID_CONFLICT:
                    continue  # refuses one frame; the task it collided with ends on its own
                if isinstance(rec.body, (Result, Error)) and rec.body.task_id is not None:
                    got.setdefault(rec.body.task_id, set()).add(rec.frame)
        return got

    # ---------------------------------------------------------------- agents
    @rule(name=st.sampled_from(list(CAPS)))
    def connect_agent(self, name: str) -> None:
        """A first connection, or a reconnection that replaces the old one (its tasks fail over)."""
        self.agents[name] = self.hub.connect(PeerSession(KEYS[name], name, "agent", CAPS[name], concurrency=2), auto=False)

    @precondition(lambda self: self.agents)
    @rule(data=st.data())
    def drop_agent(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.agents)))
        self.hub.disconnect(self.agents.pop(name))

    @rule()
    def heartbeats(self) -> None:
        for ep in self.agents.values():
            if ep.conn in self.hub.endpoints:
                ep.heartbeat()
        self.hub.run_until_idle()

    @precondition(lambda self: self.agents)
    @rule(data=st.data(), ok=st.booleans())
    def answer(self, data: st.DataObject, ok: bool) -> None:
        """Answer a task this agent was sent, on any connection it ever had: maybe late, maybe a repeat."""
        self.collect()
        name = data.draw(st.sampled_from(sorted(self.agents)))
        if not self.seen_tasks[name]:
            return
        task = data.draw(st.sampled_from(self.seen_tasks[name]))
        ep = self.agents[name]
        ep.send(ep.session.result_frame(task, msgspec.Raw(b'"done"'), self.hub.now, ok, "" if ok else "handler failed"))
        self.hub.run_until_idle()

    # ---------------------------------------------------------------- controller
    @rule(method=st.sampled_from(["m1", "m2", "m3"]), timeout_ms=st.none() | st.sampled_from([500.0, 3000.0]))
    def submit(self, method: str, timeout_ms: float | None) -> None:
        self.seq += 1
        body = b"%d" % self.seq
        tid, frame = self.ctl.session.task_frame(method, msgspec.Raw(body), self.hub.now, f"t{self.seq}", timeout_ms)
        self.tasks[tid] = (method, body, frame)
        self.ctl.send(frame)
        self.hub.run_until_idle()

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), fresh=st.booleans())
    def resubmit(self, data: st.DataObject, fresh: bool) -> None:
        """The exact frame again, or the same task id signed anew (what a reconnecting client does)."""
        tid = data.draw(st.sampled_from(sorted(self.tasks)))
        method, body, frame = self.tasks[tid]
        if fresh:
            _, frame = self.ctl.session.task_frame(method, msgspec.Raw(body), self.hub.now, tid)
        self.ctl.send(frame)
        self.hub.run_until_idle()

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def resubmit_conflicting(self, data: st.DataObject) -> None:
        """The same id with another payload: refused with id-conflict while the router knows the task."""
        tid = data.draw(st.sampled_from(sorted(self.tasks)))
        method, _, _ = self.tasks[tid]
        before = self.proto.rejections.get(errors.ID_CONFLICT, 0)
        _, frame = self.ctl.session.task_frame(method, msgspec.Raw(b'"other"'), self.hub.now, tid)
        self.ctl.send(frame)
        self.hub.run_until_idle()
        assert self.proto.rejections.get(errors.ID_CONFLICT, 0) == before + 1
    @rule()
    def reconnect_controller(self) -> None:
        self.hub.disconnect(self.ctl)
        self.connect_ctl()

    # ---------------------------------------------------------------- time
    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, dt: float) -> None:
        self.hub.advance(dt)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def never_two_different_outcomes(self) -> None:
        for tid, frames in self.outcomes().items():
            assert len(frames) == 1, f"{tid} got {len(frames)} different outcomes"

    @invariant()
    def books_balance(self) -> None:
        c = self.proto.counters
        assert c["tasks_accepted"] == len(self.tasks)
        assert c["tasks_accepted"] == self.proto.pending_tasks() + c["outcomes_completed"] + c["outcomes_failed"]
        assert self.proto.pending_tasks() == self.proto.router.tasks_in_flight

    def teardown(self) -> None:
        if not hasattr(self, "hub"):
            return
        self.hub.advance(RCFG.max_deadline_s + RCFG.lease_s + 2.0)
        assert self.proto.pending_tasks() == 0
        self.hub.disconnect(self.ctl)
        self.connect_ctl()
        for tid, (method, body, _) in self.tasks.items():
            _, frame = self.ctl.session.task_frame(method, msgspec.Raw(body), self.hub.now, tid)
            self.ctl.send(frame)
        self.hub.run_until_idle()
        got = self.outcomes()
        for tid in self.tasks:
            assert len(got.get(tid, ())) == 1, tid
        assert self.proto.counters["tasks_accepted"] == len(self.tasks)


ProtocolMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_protocol_state_machine = ProtocolMachine.TestCase
