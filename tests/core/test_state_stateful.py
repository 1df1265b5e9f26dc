"""A stateful test of restarts: the router is replaced by a new one restored from its recorded state, at any moment.

One agent (which answers only when told to) and one controller; tasks are submitted,
answered, resubmitted under their id, time jumps, and the router restarts. The same
``Recorder`` outlives every router, as the SQLite file does (``INSERT OR REPLACE`` of
the latest record per key), and each new router is restored from its snapshot.

Invariants, across every restart, within one window:
* no task id is ever handed to an agent twice;
* every outcome frame the controller receives for a task id is the same bytes;
* the agent's id stays bound to its key: a thief's registration is refused after every restart;
and at the end, every submitted id resubmitted gets an outcome.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aicp import errors
from aicp.inprocess import Endpoint, InProcessHub
from aicp.messages import Error, Task
from aicp.peer import PeerSession
from aicp.protocol import ProtocolConfig, RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity
from aicp.state import Recorder

ROUTER_KEY = Identity(b"\x71" * 32)
AGENT_KEY = Identity(b"\x72" * 32)
CTL_KEY = Identity(b"\x73" * 32)
RCFG = RouterConfig(attempt_timeout_s=1.5, default_deadline_s=4.0)
PCFG = ProtocolConfig(window_s=10_000.0)  # the whole run fits in one window
T0 = 1_000_000.0


class RestartMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.recorder = Recorder()
        self.hub: InProcessHub
        self.agent: Endpoint
        self.ctl: Endpoint
        self.ctls: list[Endpoint] = []
        self.agents: list[Endpoint] = []
        self.submitted: list[str] = []
        self.restarts = 0
        self.thief_refusals = 0

    @initialize(seed=st.integers(0, 2**16))
    def start(self, seed: int) -> None:
        self.seed = seed
        self.boot(T0, restore=False)

    def boot(self, now: float, restore: bool) -> None:
        proto = RouterProtocol(ROUTER_KEY, Router(RCFG, "round_robin", random.Random(self.seed + self.restarts)), PCFG)
        if restore:
            proto.restore(self.recorder.snapshot(now), now)
        proto.store = self.recorder
        self.hub = InProcessHub(proto, now=now)
        self.agent = self.hub.connect(PeerSession(AGENT_KEY, "a1", "agent", ["m"]), auto=False)
        self.ctl = self.hub.connect(PeerSession(CTL_KEY, "c1", "controller"))
        self.agents.append(self.agent)
        self.ctls.append(self.ctl)

    # ---------------------------------------------------------------- rules
    @rule()
    def submit(self) -> None:
        tid = f"t{len(self.submitted)}"
        self.submitted.append(tid)
        self.ctl.submit("m", len(self.submitted), task_id=tid)
        self.hub.run_until_idle()

    @precondition(lambda self: bool(self.submitted))
    @rule(data=st.data())
    def resubmit(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.submitted))
        self.ctl.submit("m", int(tid[1:]) + 1, task_id=tid)
        self.hub.run_until_idle()

    @precondition(lambda self: bool(self.agent.held))
    @rule(ok=st.booleans())
    def answer(self, ok: bool) -> None:
        self.agent.answer(self.agent.held.popleft(), ok, "done", "" if ok else "failed")
        self.hub.run_until_idle()

    @rule(dt=st.sampled_from([0.1, 1.0, 2.0, 5.0]))
    def advance(self, dt: float) -> None:
        self.hub.advance(dt)

    @rule()
    def restart(self) -> None:
        """The router dies (its agent's held tasks die with it) and a new one starts from the recorded state."""
        self.restarts += 1
        self.boot(self.hub.now + 0.5, restore=True)

    @rule()
    def thief(self) -> None:
        ep = self.hub.connect(PeerSession(Identity.generate(), "a1", "agent", ["m"]))
        codes = [r.body.code for r in ep.inbox if isinstance(r.body, Error)]
        assert codes == [errors.KEY_MISMATCH] and ep.closed is not None
        self.thief_refusals += 1

    # ---------------------------------------------------------------- invariants
    @invariant()
    def no_task_runs_twice(self) -> None:
        ids = [r.body.id for a in self.agents for r in a.inbox if isinstance(r.body, Task)]
        assert len(ids) == len(set(ids)), f"a task ran twice: {sorted(ids)}"

    @invariant()
    def one_outcome_per_task(self) -> None:
        frames: dict[str, set[bytes]] = {}
        for c in self.ctls:
            for r in c.inbox:
                tid = getattr(r.body, "task_id", None)
                if tid is not None:
                    frames.setdefault(tid, set()).add(r.frame)
        for tid, fs in frames.items():
            assert len(fs) == 1, f"task {tid} got {len(fs)} different outcomes"

    def teardown(self) -> None:
        if not hasattr(self, "hub"):
            return
        self.hub.advance(20.0)  # past every deadline
        for tid in self.submitted:
            self.ctl.submit("m", int(tid[1:]) + 1, task_id=tid)
        self.hub.run_until_idle()
        missing = [tid for tid in self.submitted if tid not in self.ctl.outcomes]
        assert not missing, f"no outcome for {missing}"
        self.one_outcome_per_task()


TestRestarts = RestartMachine.TestCase
TestRestarts.settings = settings(max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
