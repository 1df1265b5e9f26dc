"""Stateful tests (Hypothesis RuleBasedStateMachine) of the routing core and its caches.

Agents register, heartbeat, drain, crash and come back; controllers submit and
resubmit; agents answer ok or fail, late or for tasks they were never given;
time jumps forward and fires every deadline on the way. After every step:

- no accepted task has more than one outcome, and the tasks still in the router
  are exactly the accepted ones without an outcome;
- each agent's in-flight count equals the dispatches outstanding on it;
- no dispatch ever goes to an agent that is not active or lacks the capability;
- the dead-agent memory, the retry budget, the replay and outcome caches stay
  within their bounds.

At the end, time runs past every deadline and every accepted task must have
exactly one outcome.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from aicp import errors, strategies
from aicp.registry import AgentState, Status
from aicp.replay import OutcomeCache, ReplayCache
from aicp.router import ACCEPTED, LATE, NOT_ASSIGNED, Action, AgentDown, Completed, Dispatch, Failed, Router, RouterConfig

AGENTS = ["a0", "a1", "a2", "a3", "a4"]
METHODS = ["m1", "m2", "m3"]  # nobody offers m3 unless a draw gives it
CONFIG = RouterConfig(
    heartbeat_s=1.0,
    lease_s=3.0,
    attempt_timeout_s=1.0,
    default_deadline_s=4.0,
    max_deadline_s=6.0,
    max_attempts=3,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    retry_budget_reserve=3.0,
    retry_budget_max=5.0,
    suspect_after_failures=2,
    holdout_base_s=0.5,
    holdout_cap_s=2.0,
    flap_window_s=5.0,
    max_tasks=12,
    max_dead_agents=2,
)
MACHINE = settings(max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Checked:
    """Wraps a strategy and checks every choice at the moment it is made."""

    def __init__(self, inner: strategies.Strategy) -> None:
        self.inner = inner
        self.name = inner.name
        self.router: Router | None = None

    def choose(self, method: str, candidates: Sequence[AgentState], rng: random.Random, exclude: Collection[str]) -> AgentState | None:
        agent = self.inner.choose(method, candidates, rng, exclude)
        if agent is not None:
            assert self.router is not None
            assert self.router.registry.get(agent.agent_id) is agent, "dispatch to an agent the registry no longer holds"
            assert agent.status is Status.ACTIVE, f"dispatch to {agent.agent_id} while {agent.status}"
            assert method in agent.capabilities, f"dispatch of {method} to {agent.agent_id} without the capability"
        return agent


class RouterMachine(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.router: Router
        self.outcomes: Counter[str] = Counter()  # by incarnation ("t3#0")
        self.incarnation: dict[str, int] = {}  # task id -> current incarnation number
        self.method: dict[str, str] = {}
        self.alive: dict[str, tuple[str, ...]] = {}  # the model's view: registered and not lost
        self.seq = 0

    @initialize(strategy=st.sampled_from(strategies.names()), seed=st.integers(0, 2**16))
    def start(self, strategy: str, seed: int) -> None:
        checked = Checked(strategies.get(strategy))
        self.router = Router(CONFIG, checked, random.Random(seed))
        checked.router = self.router

    # ---------------------------------------------------------------- helpers
    def key(self, tid: str) -> str:
        return f"{tid}#{self.incarnation[tid]}"

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                assert action.agent_id in self.alive, f"dispatch to {action.agent_id}, which the model knows is gone"
                assert self.method[action.task_id] in self.alive[action.agent_id]
                assert 1 <= action.attempt <= CONFIG.max_attempts
            elif isinstance(action, (Completed, Failed)):
                self.outcomes[self.key(action.task_id)] += 1
                assert self.outcomes[self.key(action.task_id)] == 1, f"second outcome for {action.task_id}"
                if isinstance(action, Failed):
                    assert action.code in errors.ALL_CODES
            elif isinstance(action, AgentDown):
                self.alive.pop(action.agent_id, None)

    def run_timers_until(self, target: float) -> None:
        while True:
            deadline = self.router.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.apply(self.router.on_timer(self.now))
        self.now = target

    # ---------------------------------------------------------------- agents
    @rule(agent=st.sampled_from(AGENTS), caps=st.sets(st.sampled_from(METHODS[:2]), max_size=2) | st.just({"m3"}), concurrency=st.integers(1, 3))
    def register(self, agent: str, caps: set[str], concurrency: int) -> None:
        """A new agent, or one reconnecting (a re-registration), possibly with other capabilities."""
        ordered = tuple(sorted(caps))
        self.apply(self.router.register_agent(agent, ordered, self.now, concurrency=concurrency))
        self.alive[agent] = ordered

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        self.router.heartbeat(agent, self.now, load=1)

    @rule(agent=st.sampled_from(AGENTS))
    def drain(self, agent: str) -> None:
        self.router.drain_agent(agent, self.now)

    @rule(agent=st.sampled_from(AGENTS))
    def crash(self, agent: str) -> None:
        self.apply(self.router.agent_lost(agent, self.now, "crashed"))
        self.alive.pop(agent, None)

    # ---------------------------------------------------------------- tasks
    @rule(target=tasks, method=st.sampled_from(METHODS), timeout=st.none() | st.floats(0.1, 10.0))
    def submit(self, method: str, timeout: float | None) -> str:
        self.seq += 1
        tid = f"t{self.seq}"
        self.incarnation[tid] = 0
        self.method[tid] = method
        self.apply(self.router.submit(tid, method, self.now, timeout))
        return tid

    @rule(tid=tasks)
    def resubmit(self, tid: str) -> None:
        """The same id again: refused while it runs; after its outcome, a new task (the protocol
        layer answers such resubmissions from its outcome cache before they get here)."""
        if tid in self.router:
            before = (self.router.tasks_in_flight, self.router.assigned_agent(tid), self.router.stats.submitted)
            with pytest.raises(errors.LocalError):
                self.router.submit(tid, self.method[tid], self.now)
            assert (self.router.tasks_in_flight, self.router.assigned_agent(tid), self.router.stats.submitted) == before
            return
        assert self.outcomes[self.key(tid)] == 1
        self.incarnation[tid] += 1
        self.apply(self.router.submit(tid, self.method[tid], self.now))

    @rule(tid=tasks, ok=st.booleans())
    def answer_assigned(self, tid: str, ok: bool) -> None:
        agent = self.router.assigned_agent(tid)
        if agent is None:
            return
        verdict, actions = self.router.result(agent, tid, ok, self.now)
        assert verdict == ACCEPTED
        self.apply(actions)
        if ok:
            assert self.outcomes[self.key(tid)] == 1 and tid not in self.router

    @rule(agent=st.sampled_from(AGENTS), tid=tasks, ok=st.booleans())
    def answer_any(self, agent: str, tid: str, ok: bool) -> None:
        """Late results, results for tasks never given, results after a crash."""
        assigned = self.router.assigned_agent(tid)
        in_flight = {a.agent_id: a.in_flight for a in self.router.registry.agents.values()}
        verdict, actions = self.router.result(agent, tid, ok, self.now)
        if agent == assigned:
            assert verdict == ACCEPTED
        else:
            assert verdict in (LATE, NOT_ASSIGNED) and actions == []
            assert self.router.assigned_agent(tid) == assigned
            assert {a.agent_id: a.in_flight for a in self.router.registry.agents.values()} == in_flight
        self.apply(actions)

    # ---------------------------------------------------------------- time
    @rule(dt=st.sampled_from([0.0, 0.01, 0.2, 0.6, 1.0, 1.5, 3.5]))
    def advance(self, dt: float) -> None:
        self.run_timers_until(self.now + dt)

    @precondition(lambda self: self.alive)
    @rule(dt=st.sampled_from([0.5, 2.0]))
    def advance_with_heartbeats(self, dt: float) -> None:
        """Time passes while live agents keep their leases."""
        for agent in list(self.alive):
            self.router.heartbeat(agent, self.now)
        self.run_timers_until(self.now + dt)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def one_outcome_at_most_and_open_tasks_match(self) -> None:
        assert all(n <= 1 for n in self.outcomes.values())
        open_tasks = {tid for tid in self.incarnation if self.outcomes[self.key(tid)] == 0}
        assert set(self.router._tasks) == open_tasks
        assert self.router.tasks_in_flight <= CONFIG.max_tasks

    @invariant()
    def in_flight_counts_match_outstanding_dispatches(self) -> None:
        by_agent: Counter[str] = Counter()
        for task in self.router._tasks.values():
            if task.agent is not None:
                by_agent[task.agent.agent_id] += 1
                assert self.router.registry.get(task.agent.agent_id) is task.agent
        for state in self.router.registry.agents.values():
            on_it = state.tasks or {}
            assert state.in_flight == by_agent[state.agent_id] == len(on_it), state
            assert all(t.agent is state for t in on_it.values())
            if state.status is Status.DEAD:
                assert state.in_flight == 0

    @invariant()
    def bounded_memory(self) -> None:
        router = self.router
        assert len(router._dead) <= CONFIG.max_dead_agents
        assert router.registry.count_by_status()[Status.DEAD.value] <= CONFIG.max_dead_agents
        assert len(router.registry) <= len(AGENTS)
        # The router spends a token when at least 1 - 1e-9 is left (float sums such as 10 * 0.1).
        assert -1e-9 <= router._retry_tokens <= CONFIG.retry_budget_max
        for state in router.registry.agents.values():
            assert 0.0 <= state.trust <= 1.0 and 0.0 <= state.success_rate <= 1.0

    def teardown(self) -> None:
        if not hasattr(self, "router"):
            return
        # Past every deadline: each accepted task must have ended exactly once.
        self.run_timers_until(self.now + CONFIG.max_deadline_s + CONFIG.lease_s + CONFIG.holdout_cap_s + 1.0)
        assert self.router.tasks_in_flight == 0
        for tid in self.incarnation:
            assert self.outcomes[self.key(tid)] == 1, tid
        for state in self.router.registry.agents.values():
            assert state.in_flight == 0


RouterMachine.TestCase.settings = MACHINE
test_router_state_machine = RouterMachine.TestCase


# ------------------------------------------------------------------------ caches
class CacheMachine(RuleBasedStateMachine):
    """ReplayCache never forgets an id early and never grows past its bound; OutcomeCache too."""

    WINDOW = 5.0
    SIZE = 4

    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.replay = ReplayCache(self.WINDOW, self.SIZE)
        self.outcomes: OutcomeCache[int] = OutcomeCache(self.WINDOW, self.SIZE)
        self.expiry: dict[tuple[str, str], float] = {}
        self.stored: dict[str, tuple[float, int]] = {}

    keys = Bundle("keys")

    @rule(target=keys, sender=st.sampled_from("abc"), mid=st.integers(0, 6), skew=st.floats(-5.0, 5.0))
    def add(self, sender: str, mid: int, skew: float) -> tuple[str, str]:
        key = (sender, str(mid))
        ts = self.now + skew
        live = {k for k, e in self.expiry.items() if e > self.now}
        added = self.replay.add(key, ts, self.now)
        if key in live:
            assert not added, "an id inside its window was accepted twice"
        elif added:
            self.expiry[key] = max(ts, self.now) + self.WINDOW
        else:
            assert len(self.replay) >= self.SIZE or key in self.replay, "refused although there was room"
        return key

    @rule(key=consumes(keys))
    def forget(self, key: tuple[str, str]) -> None:
        """Keys leave the bundle; the cache keeps them anyway (nothing to do but check membership)."""
        if self.expiry.get(key, 0.0) > self.now:
            assert key in self.replay

    @rule(k=st.sampled_from("pqrstu"), value=st.integers())
    def put_outcome(self, k: str, value: int) -> None:
        self.outcomes.put(k, value, self.now)
        self.stored[k] = (self.now + self.WINDOW, value)

    @rule(k=st.sampled_from("pqrstu"))
    def get_outcome(self, k: str) -> None:
        got = self.outcomes.get(k, self.now)
        if got is not None:
            expiry, value = self.stored[k]
            assert got == value and expiry > self.now

    @rule(dt=st.sampled_from([0.0, 0.5, 2.0, 5.0, 7.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def bounded_and_never_forgets_early(self) -> None:
        assert len(self.replay) <= self.SIZE
        assert len(self.outcomes) <= self.SIZE
        for key, expiry in self.expiry.items():
            if expiry > self.now:
                assert key in self.replay, f"{key} forgotten before {expiry} (now {self.now})"


CacheMachine.TestCase.settings = MACHINE
test_cache_state_machine = CacheMachine.TestCase


def test_regression_agent_lost_fails_over_when_its_own_old_death_is_evicted() -> None:
    """Found by the machine above: with the dead-agent memory full of this agent's earlier
    death, agent_lost evicted the agent before failing its tasks over; the task then kept a
    dangling agent and the next timer raised KeyError."""
    router = Router(RouterConfig(max_dead_agents=2, flap_window_s=0.0), "round_robin", random.Random(0))
    router.register_agent("a0", ["m1"], 0.0)
    router.register_agent("a2", ["m1"], 0.0)
    router.agent_lost("a0", 0.0)
    router.register_agent("a0", ["m1"], 1.0)
    router.agent_lost("a2", 1.0)
    [dispatch] = router.submit("t1", "m1", 1.0)
    assert isinstance(dispatch, Dispatch) and dispatch.agent_id == "a0"
    router.agent_lost("a0", 1.0)  # the memory now holds a0, a2, a0: one must go
    assert router.assigned_agent("t1") is None
    assert router.registry.get("a0") is not None and router.registry.get("a0").in_flight == 0  # type: ignore[union-attr]
    actions = router.on_timer(100.0)
    assert [type(a) for a in actions] == [Failed] and "t1" not in router
