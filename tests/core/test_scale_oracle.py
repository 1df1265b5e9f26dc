"""The indexed registry and strategies against the scan-based oracle (tests/core/oracle_strategies.py).

Two routers get the same inputs: one as shipped, one with the oracle registry and
the oracle strategy. Agents register (with various concurrency and trust),
heartbeat, drain, crash and come back; tasks are submitted and answered; bad
signatures cut trust; time runs and fires timeouts, backoffs, hold-outs and lease
expiries. After every step both routers must have returned the same actions,
drawn the same random numbers, and hold the same active agents in the same order.
Every strategy, the random ones included, draws the same numbers as its oracle,
so the decisions must be identical; the weighted draw is also checked against
its weights statistically with a fixed seed.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from oracle_strategies import ORACLES, OracleRegistry

from aicp import registry as registry_module
from aicp import strategies
from aicp import strategies as strategies_module
from aicp.registry import AgentState, Registry, Status
from aicp.router import Action, Router, RouterConfig

AGENTS = [f"a{i}" for i in range(8)]
METHODS = ["m1", "m2", "m3"]
CONFIG = RouterConfig(
    heartbeat_s=1.0,
    lease_s=3.0,
    attempt_timeout_s=1.0,
    default_deadline_s=4.0,
    max_deadline_s=6.0,
    max_attempts=3,
    backoff_base_s=0.05,
    backoff_cap_s=0.5,
    retry_budget_reserve=5.0,
    retry_budget_max=8.0,
    suspect_after_failures=2,
    holdout_base_s=0.5,
    holdout_cap_s=2.0,
    flap_window_s=5.0,
    max_tasks=30,
    max_dead_agents=3,
)
MACHINE = settings(max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle_router(name: str, seed: int, config: RouterConfig = CONFIG) -> Router:
    router = Router(config, ORACLES[name](), random.Random(seed))
    router.registry = OracleRegistry()  # type: ignore[assignment]
    return router


def active_ids(router: Router, method: str) -> list[str]:
    return [a.agent_id for a in router.registry.agents_with(method)]


class TwinMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.fast: Router
        self.slow: Router
        self.seq = 0
        self.tasks: list[str] = []
        # Clean up and compact at every chance, so those paths run in short examples too.
        self.saved_slack = (registry_module.COMPACT_SLACK, strategies_module.INDEX_SLACK)

    @initialize(name=st.sampled_from(strategies.names()), seed=st.integers(0, 2**16), eager=st.booleans())
    def start(self, name: str, seed: int, eager: bool) -> None:
        if eager:
            registry_module.COMPACT_SLACK, strategies_module.INDEX_SLACK = 0, 0
        self.fast = Router(CONFIG, strategies.get(name), random.Random(seed))
        self.slow = oracle_router(name, seed)

    def both(self, call: str, *args: object, **kwargs: object) -> object:
        got = getattr(self.fast, call)(*args, **kwargs)
        want = getattr(self.slow, call)(*args, **kwargs)
        assert got == want, f"{call}{args}: {got!r} != oracle {want!r}"
        assert self.fast.rng.getstate() == self.slow.rng.getstate(), f"{call}{args}: drew other random numbers"
        return got

    def run_timers_until(self, target: float) -> None:
        while True:
            deadline = self.fast.next_deadline()
            assert deadline == self.slow.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.both("on_timer", self.now)
        self.now = target

    # ---------------------------------------------------------------- agents
    @rule(
        agent=st.sampled_from(AGENTS),
        caps=st.sets(st.sampled_from(METHODS[:2]), min_size=1, max_size=2) | st.just({"m3"}),
        concurrency=st.integers(1, 4),
        trust=st.sampled_from([None, 0.0, 0.002, 0.002, 0.01, 1.0]),  # tiny trusts: rejection gives up, the tree draws
    )
    def register(self, agent: str, caps: set[str], concurrency: int, trust: float | None) -> None:
        self.both("register_agent", agent, tuple(sorted(caps)), self.now, concurrency=concurrency, trust=trust)

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        self.both("heartbeat", agent, self.now, load=1)

    @rule(agent=st.sampled_from(AGENTS))
    def drain(self, agent: str) -> None:
        self.both("drain_agent", agent, self.now)

    @rule(agent=st.sampled_from(AGENTS))
    def lost(self, agent: str) -> None:
        self.both("agent_lost", agent, self.now, "crashed")

    @rule(agent=st.sampled_from(AGENTS))
    def bad_signature(self, agent: str) -> None:
        self.both("penalise_bad_signature", agent)

    # ---------------------------------------------------------------- tasks
    @rule(method=st.sampled_from(METHODS), n=st.integers(1, 4))
    def submit(self, method: str, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            tid = f"t{self.seq}"
            self.tasks.append(tid)
            self.both("submit", tid, method, self.now)

    @precondition(lambda self: self.tasks)
    @rule(pick=st.integers(0, 2**16), ok=st.booleans(), dt=st.sampled_from([0.0, 0.003, 0.05]))
    def result(self, pick: int, ok: bool, dt: float) -> None:
        """The assigned agent answers (after ``dt``, so latencies differ)."""
        self.run_timers_until(self.now + dt)
        tid = self.tasks[pick % len(self.tasks)]
        agent = self.fast.assigned_agent(tid)
        assert agent == self.slow.assigned_agent(tid)
        if agent is not None:
            self.both("result", agent, tid, ok, self.now)

    @rule(dt=st.sampled_from([0.0, 0.01, 0.2, 0.6, 1.0, 1.5, 3.5]))
    def advance(self, dt: float) -> None:
        """Time runs: timeouts, backoffs, hold-outs, lease expiries."""
        self.run_timers_until(self.now + dt)

    @rule(dt=st.sampled_from([0.5, 2.0]))
    def advance_with_heartbeats(self, dt: float) -> None:
        for agent in AGENTS:
            self.both("heartbeat", agent, self.now)
        self.run_timers_until(self.now + dt)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def same_pools(self) -> None:
        if not hasattr(self, "fast"):
            return
        fast, slow = self.fast.registry, self.slow.registry
        for method in METHODS:
            ids = active_ids(self.fast, method)
            assert ids == active_ids(self.slow, method), method
            pool = fast.agents_with(method)
            assert len(pool) == len(ids) and [pool[k].agent_id for k in range(len(pool))] == ids
            for status in Status:
                assert fast.count_with(method, status) == slow.count_with(method, status)  # type: ignore[attr-defined]
        assert fast.count_by_status() == slow.count_by_status()
        # The old registry kept listing a capability whose last agent re-registered without it.
        assert fast.capabilities() == [c for c in slow.capabilities() if slow.count_with(c)]  # type: ignore[attr-defined]

    def teardown(self) -> None:
        try:
            if hasattr(self, "fast"):
                self.run_timers_until(self.now + CONFIG.max_deadline_s + CONFIG.lease_s + CONFIG.holdout_cap_s + 1.0)
                assert self.fast.stats.as_dict() == self.slow.stats.as_dict()
        finally:
            registry_module.COMPACT_SLACK, strategies_module.INDEX_SLACK = self.saved_slack


TwinMachine.TestCase.settings = MACHINE
test_indexed_core_matches_the_oracle = TwinMachine.TestCase


# ------------------------------------------------------------------------ larger pools, plain loops
@pytest.mark.parametrize("name", strategies.names())
def test_same_decisions_as_the_oracle_on_a_churning_pool_of_300(name: str) -> None:
    """Hundreds of agents, many deaths and returns (pool compaction, index clean-ups)."""
    config = RouterConfig(max_dead_agents=40, suspect_after_failures=3, max_tasks=2000)
    fast = Router(config, strategies.get(name), random.Random(5))
    slow = oracle_router(name, 5, config)
    script = random.Random(11)
    now = 0.0
    open_tasks: list[str] = []
    for step in range(2500):
        now += 0.001
        roll = script.random()
        if roll < 0.25:
            args: tuple[object, ...] = ("register_agent", f"a{script.randrange(300)}", ("m",) if script.random() < 0.9 else ("m", "x"), now)
            kwargs: dict[str, object] = {"concurrency": script.choice([1, 1, 2, 3]), "trust": script.choice([0.0, 0.001, 0.002, 0.01])}
        elif roll < 0.33:
            args, kwargs = ("agent_lost", f"a{script.randrange(300)}", now), {}
        elif roll < 0.36:
            args, kwargs = ("drain_agent", f"a{script.randrange(300)}", now), {}
        elif roll < 0.75 or not open_tasks:
            tid = f"t{step}"
            open_tasks.append(tid)
            args, kwargs = ("submit", tid, "m", now), {}
        else:
            tid = open_tasks.pop(script.randrange(len(open_tasks)))
            agent = fast.assigned_agent(tid)
            assert agent == slow.assigned_agent(tid)
            if agent is None:
                continue
            args, kwargs = ("result", agent, tid, script.random() < 0.8, now), {}
        got = getattr(fast, str(args[0]))(*args[1:], **kwargs)
        want = getattr(slow, str(args[0]))(*args[1:], **kwargs)
        assert got == want, (step, args)
        if step % 50 == 0:
            assert active_ids(fast, "m") == active_ids(slow, "m")
            now += 0.5
            got_t: list[Action] = fast.on_timer(now)
            assert got_t == slow.on_timer(now)
    assert fast.stats.as_dict() == slow.stats.as_dict()
    assert fast.rng.getstate() == slow.rng.getstate()


def test_trust_weighted_tree_draw_follows_the_weights() -> None:
    """Weights so small that rejection sampling always gives up: every pick comes from the
    Fenwick tree. Frequencies must match trust / (1 + load) among the eligible agents."""
    reg = Registry()
    trusts = [0.001, 0.002, 0.0, 0.004, 0.003, 0.001]
    loads = [0, 1, 0, 3, 0, 2]
    for i, (t, load) in enumerate(zip(trusts, loads)):
        state = AgentState(f"a{i}", ["m"], 2, t, 0.0, 90.0)
        reg.add(state)
        state.in_flight = load
    reg.set_status(reg.get("a5"), Status.DRAINING)  # type: ignore[arg-type]
    pool = reg.agents_with("m")
    strategy = strategies.get("trust_weighted")
    rng = random.Random(3)
    draws = 20000
    counts = Counter(strategy.choose("m", pool, rng, ["a1"]).agent_id for _ in range(draws))  # type: ignore[union-attr]
    weights = {f"a{i}": t / (1 + loads[i] / 2) for i, t in enumerate(trusts) if i not in (1, 5)}
    total = sum(weights.values())
    assert set(counts) == {a for a, w in weights.items() if w > 0}
    for agent, w in weights.items():
        p = w / total
        sigma = math.sqrt(draws * p * (1 - p)) or 1.0
        assert abs(counts[agent] - draws * p) < 5 * sigma, (agent, counts[agent], draws * p)


def test_least_loaded_ties_by_join_order_across_concurrency() -> None:
    """Load is in_flight / concurrency: 1/2 ties 2/4, and the earlier joined agent wins the tie."""
    r = Router(RouterConfig(), "least_loaded", random.Random(0))
    for agent, conc in (("a", 4), ("b", 2), ("c", 1)):
        r.register_agent(agent, ["m"], 0.0, concurrency=conc)
    r.registry.get("a").in_flight = 2  # type: ignore[union-attr]
    r.registry.get("b").in_flight = 1  # type: ignore[union-attr]
    r.registry.get("c").in_flight = 1  # type: ignore[union-attr]
    [d] = r.submit("t1", "m", 0.0)
    assert d.agent_id == "a"  # type: ignore[union-attr]
    r.agent_lost("a", 0.0)
    r.register_agent("a", ["m"], 0.5, concurrency=4)  # back, with nothing in flight, but now last in join order
    r.registry.get("a").in_flight = 2  # type: ignore[union-attr]
    [d] = r.submit("t2", "m", 1.0)
    assert d.agent_id == "b"  # type: ignore[union-attr]


def test_registering_does_not_copy_the_pool() -> None:
    r = Router(RouterConfig(), "round_robin", random.Random(0))
    r.register_agent("a0", ["m"], 0.0)
    pool = r.registry.agents_with("m")
    for i in range(1, 50):
        r.register_agent(f"a{i}", ["m"], 0.0)
    r.drain_agent("a7", 0.0)
    assert r.registry.agents_with("m") is pool and len(pool) == 49
    assert "a7" not in [a.agent_id for a in pool]


@pytest.mark.parametrize("trusts", [[0.0] * 5, [0.0, 0.0, 0.001, 0.0, 0.0], [0.001, 0.003, 0.0, 0.002, 0.0005]])
def test_trust_weighted_picks_what_the_oracle_picks_when_weights_are_tiny_or_zero(trusts: list[float]) -> None:
    """All-zero weights fall back to a uniform pick; tiny ones to the tree. Same picks, same draws."""
    fast, slow = Registry(), OracleRegistry()
    for reg in (fast, slow):
        for i, t in enumerate(trusts):
            reg.add(AgentState(f"a{i}", ["m"], 1, t, 0.0, 90.0))
    ours, theirs = strategies.get("trust_weighted"), ORACLES["trust_weighted"]()
    rng_ours, rng_theirs = random.Random(9), random.Random(9)
    for k in range(300):
        exclude = [f"a{k % 5}", f"a{(k * 3) % 5}"][: k % 3]
        got = ours.choose("m", fast.agents_with("m"), rng_ours, exclude)
        want = theirs.choose("m", slow.agents_with("m"), rng_theirs, exclude)
        assert got is not None and want is not None and got.agent_id == want.agent_id, k
    assert rng_ours.getstate() == rng_theirs.getstate()
