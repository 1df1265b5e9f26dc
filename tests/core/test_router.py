"""Pure tests of the routing state machine: no loop, no sleep, time stepped by hand."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from aicp import errors, strategies
from aicp.registry import Status
from aicp.router import ACCEPTED, LATE, NOT_ASSIGNED, AgentDown, Completed, Dispatch, Failed, Router, RouterConfig


def make(strategy: str = "round_robin", seed: int = 1, **cfg: float) -> Router:
    return Router(RouterConfig(**cfg), strategy, random.Random(seed))  # type: ignore[arg-type]


def dispatched(actions: list) -> list[str]:
    return [a.agent_id for a in actions if isinstance(a, Dispatch)]


def test_submit_without_agents_fails_at_once_with_no_agent() -> None:
    r = make()
    [failed] = r.submit("t1", "image.label", 0.0)
    assert isinstance(failed, Failed) and failed.code == errors.NO_AGENT
    assert r.tasks_in_flight == 0


def test_routes_only_to_agents_with_the_capability() -> None:
    r = make()
    r.register_agent("img", ["image.label"], 0.0)
    r.register_agent("txt", ["text.classify"], 0.0)
    for i in range(10):
        assert dispatched(r.submit(f"t{i}", "text.classify", 0.0)) == ["txt"]


def test_round_robin_cycles_in_registration_order() -> None:
    r = make("round_robin")
    for name in "abc":
        r.register_agent(name, ["m"], 0.0)
    picks = [dispatched(r.submit(f"t{i}", "m", 0.0))[0] for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_picks_fewest_in_flight_per_concurrency() -> None:
    r = make("least_loaded")
    r.register_agent("small", ["m"], 0.0, concurrency=1)
    r.register_agent("big", ["m"], 0.0, concurrency=4)
    picks = Counter(dispatched(r.submit(f"t{i}", "m", 0.0))[0] for i in range(5))
    # loads after 5 dispatches: small 1/1, big 4/4 — big takes four of the five
    assert picks == {"big": 4, "small": 1}


def test_power_of_two_never_picks_the_busier_of_two() -> None:
    r = make("power_of_two")
    r.register_agent("busy", ["m"], 0.0)
    r.register_agent("idle", ["m"], 0.0)
    r.registry.get("busy").in_flight = 100  # type: ignore[union-attr]
    picks = {dispatched(r.submit(f"t{i}", "m", 0.0))[0] for i in range(50)}
    # with two agents both are always the two choices, and idle (up to 50 in flight) stays below busy (100)
    assert picks == {"idle"}


def test_trust_weighted_prefers_trusted_agents_in_proportion() -> None:
    r = make("trust_weighted", seed=3)
    r.register_agent("good", ["m"], 0.0, trust=0.9)
    r.register_agent("bad", ["m"], 0.0, trust=0.1)
    picks = Counter()
    for i in range(4000):
        [d] = r.submit(f"t{i}", "m", 0.0)
        assert isinstance(d, Dispatch)
        picks[d.agent_id] += 1
        r.result(d.agent_id, d.task_id, True, 0.0)
        # keep trust fixed so the expected ratio is exactly 9:1
        r.registry.get("good").trust, r.registry.get("bad").trust = 0.9, 0.1  # type: ignore[union-attr]
    share = picks["good"] / 4000
    assert 0.88 < share < 0.92


def test_latency_ewma_avoids_the_slow_agent() -> None:
    r = make("latency_ewma", seed=5)
    r.register_agent("fast", ["m"], 0.0)
    r.register_agent("slow", ["m"], 0.0)
    r.registry.get("fast").latency_ewma = 0.001  # type: ignore[union-attr]
    r.registry.get("slow").latency_ewma = 0.100  # type: ignore[union-attr]
    picks = Counter(dispatched(r.submit(f"t{i}", "m", 0.0))[0] for i in range(20))
    # fast accumulates in-flight tasks; it loses only once 0.001*(n+1) > 0.1, i.e. beyond 99 in flight
    assert picks == {"fast": 20}


@pytest.mark.parametrize("name", strategies.names())
def test_every_strategy_picks_only_active_capable_agents(name: str) -> None:
    r = make(name, seed=11)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m", "other"], 0.0)
    r.register_agent("c", ["other"], 0.0)
    r.register_agent("d", ["m"], 0.0)
    r.agent_lost("d", 0.0)
    r.drain_agent("a", 0.0)
    for i in range(50):
        assert dispatched(r.submit(f"t{i}", "m", 0.0)) == ["b"]


def test_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(errors.LocalError, match="round_robin"):
        strategies.get("nope")


@pytest.mark.parametrize(("lease_check_s", "noticed"), [(0.0, 39.0), (1.0, 39.0625)])
def test_heartbeats_keep_an_agent_and_silence_evicts_it(lease_check_s: float, noticed: float) -> None:
    r = make(lease_s=10.0, lease_check_s=lease_check_s)
    r.register_agent("a", ["m"], 0.0)
    for t in range(1, 30):
        r.heartbeat("a", float(t))
        assert r.on_timer(float(t)) == []
    assert r.registry.get("a").status is Status.ACTIVE  # type: ignore[union-attr]
    # the lease check re-arms itself lazily: a check at 30 finds the lease renewed to 39; with lease_check_s, checks fall
    # on multiples of min(lease_check_s, lease_s / 32) = 0.3125 s, and 39.0625 is the first at or after 39
    assert r.on_timer(38.9) == []
    assert r.next_deadline() == pytest.approx(noticed)
    assert r.on_timer(noticed - 1e-6) == []
    actions = r.on_timer(noticed)
    assert actions == [AgentDown("a", "lease expired")]
    assert r.registry.get("a").status is Status.DEAD  # type: ignore[union-attr]


@pytest.mark.parametrize("lease_check_s", [0.0, 1.0])
def test_lease_wake_ups_per_second_do_not_grow_with_the_number_of_agents(lease_check_s: float) -> None:
    """Agents renewing their leases at random phases: how often the core asks to be woken for them (``next_deadline``),
    counted in the core over two lease periods of steady state. Each check at its own time (lease_check_s 0): one
    wake-up per agent per lease, N / lease_s a second. Checks on multiples of a step: at most lease_s / step per lease."""
    lease_s = 90.0
    rate: dict[int, float] = {}
    for n in (100, 1000, 10_000):
        r = make(lease_s=lease_s, lease_check_s=lease_check_s)
        rng = random.Random(n)
        # each agent registers at a random time in the first lease, then renews every 30 s (heartbeat_s)
        beats = [(rng.uniform(0.0, lease_s), f"a{i}") for i in range(n)]
        heapq.heapify(beats)
        registered: set[str] = set()
        start, end = 2 * lease_s, 4 * lease_s
        wake_ups = 0
        while True:
            due = r.next_deadline()
            if due is not None and due <= beats[0][0]:
                if due >= end:
                    break
                assert r.on_timer(due) == []  # nobody is late: no lease runs out
                wake_ups += due >= start
            else:
                t, agent = heapq.heappop(beats)
                if agent in registered:
                    r.heartbeat(agent, t)
                else:
                    r.register_agent(agent, ["m"], t)
                    registered.add(agent)
                heapq.heappush(beats, (t + 30.0, agent))
        assert r.registry.count_by_status()[Status.ACTIVE.value] == n
        rate[n] = wake_ups / (end - start)
    print(f"lease_check_s {lease_check_s}: lease wake-ups per second at 100, 1000, 10000 agents:", rate)
    if lease_check_s == 0.0:  # the old way, for comparison: it grows with N, at least one wake-up per agent per lease
        assert rate[10_000] > 50 * rate[100] and rate[10_000] >= 10_000 / lease_s
    else:
        assert max(rate.values()) <= 1.0 / lease_check_s
        assert rate[10_000] <= rate[1000] * 1.05 + 0.01


def test_attempt_timeout_fails_over_to_a_different_agent_after_backoff() -> None:
    r = make(attempt_timeout_s=1.0, backoff_base_s=0.1, backoff_cap_s=0.1)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    assert dispatched(r.submit("t", "m", 0.0)) == ["a"]
    assert r.next_deadline() == pytest.approx(1.0)
    assert r.on_timer(1.0) == []  # timed out: now backing off
    retry_at = r.next_deadline()
    assert retry_at is not None and 1.0 <= retry_at <= 1.1  # full jitter within base
    assert dispatched(r.on_timer(retry_at)) == ["b"]
    assert r.registry.get("a").timed_out == 1  # type: ignore[union-attr]
    assert r.registry.get("a").in_flight == 0  # type: ignore[union-attr]
    verdict, actions = r.result("b", "t", True, retry_at + 0.01)
    assert verdict == ACCEPTED and actions == [Completed("t", "b", 2)]


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    r = make(attempt_timeout_s=1.0, backoff_base_s=0.5, backoff_cap_s=100.0, max_attempts=5, default_deadline_s=1000.0, seed=7)
    for name in "abcde":
        r.register_agent(name, ["m"], 0.0)
    r.submit("t", "m", 0.0)
    now, delays = 0.0, []
    for _ in range(4):
        now = r.next_deadline()  # type: ignore[assignment]
        r.on_timer(now)  # attempt times out
        retry = r.next_deadline()
        assert retry is not None
        delays.append(retry - now)
        now = retry
        r.on_timer(now)
    for k, d in enumerate(delays):
        assert 0.0 <= d <= 0.5 * 2**k


def test_agent_death_fails_over_its_tasks_and_late_result_is_dropped() -> None:
    r = make(backoff_base_s=0.0)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    r.submit("t", "m", 0.0)
    assert r.agent_lost("a", 0.5) == []  # backing off (zero delay)
    assert dispatched(r.on_timer(0.5)) == ["b"]
    verdict, actions = r.result("a", "t", True, 0.6)  # the dead agent answers after all
    assert verdict == LATE and actions == []
    verdict, actions = r.result("b", "t", True, 0.7)
    assert actions == [Completed("t", "b", 2)]
    verdict, actions = r.result("b", "t", True, 0.8)  # a duplicate of the same answer
    assert verdict == LATE and actions == []
    assert r.stats.late_results == 2 and r.stats.completed == 1


def test_result_from_an_agent_never_assigned_is_refused() -> None:
    r = make()
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    r.submit("t", "m", 0.0)  # goes to a
    verdict, actions = r.result("b", "t", True, 0.1)
    assert verdict == NOT_ASSIGNED and actions == []
    assert r.assigned_agent("t") == "a"


def test_failures_exhaust_max_attempts_with_the_last_code() -> None:
    r = make(max_attempts=2, backoff_base_s=0.0)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    r.submit("t", "m", 0.0)
    r.result("a", "t", False, 0.1, "boom")
    [d] = r.on_timer(0.1)
    assert d == Dispatch("t", "b", 2)
    _, [failed] = r.result("b", "t", False, 0.2, "bang")
    assert isinstance(failed, Failed) and failed.code == errors.AGENT_FAILED and "bang" in failed.message
    assert failed.attempts == 2


def test_overall_deadline_bounds_all_attempts() -> None:
    r = make(attempt_timeout_s=10.0, max_attempts=5)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    r.submit("t", "m", 0.0, timeout_s=2.0)
    assert r.next_deadline() == pytest.approx(2.0)  # the deadline, not the 10 s attempt limit
    [failed] = r.on_timer(2.0)
    assert isinstance(failed, Failed) and failed.code == errors.TIMEOUT


def test_retry_budget_caps_retries_at_a_fraction_of_traffic() -> None:
    r = make(retry_budget_ratio=0.1, retry_budget_reserve=2.0, backoff_base_s=0.0, max_attempts=3, suspect_after_failures=10**6)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    for i in range(40):
        pending = r.submit(f"t{i}", "m", 0.0)
        while pending:  # fail every attempt of this task until it ends
            nxt: list = []
            for a in pending:
                if isinstance(a, Dispatch):
                    nxt.extend(r.result(a.agent_id, a.task_id, False, 0.0)[1])
            nxt.extend(r.on_timer(0.0))
            pending = nxt
    # 2 reserve tokens + 40 * 0.1 earned = 6 retries for 40 failing tasks, then no more
    assert r.stats.retries == 6
    assert r.tasks_in_flight == 0
    assert r.stats.failed == {errors.AGENT_FAILED: 40}


def test_flapping_agent_is_held_out_longer_each_time() -> None:
    r = make(holdout_base_s=1.0, holdout_cap_s=60.0, flap_window_s=100.0, lease_s=1000.0)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("steady", ["m"], 0.0)  # someone must stay in: the last capable agent is never held out
    holds = []
    now = 0.0
    for _ in range(4):
        r.agent_lost("a", now)
        now += 0.5
        r.register_agent("a", ["m"], now)
        state = r.registry.get("a")
        assert state is not None and state.status is Status.SUSPECT
        holds.append(state.holdout_until - now)
        assert [x.agent_id for x in r.registry.agents_with("m")] == ["steady"]
        now = state.holdout_until
        r.on_timer(now)
        assert state.status is Status.ACTIVE
    assert holds == [1.0, 2.0, 4.0, 8.0]


def test_consecutive_failures_suspend_then_restore_an_agent() -> None:
    r = make(suspect_after_failures=3, backoff_base_s=0.0, max_attempts=1, holdout_base_s=5.0)
    r.register_agent("a", ["m"], 0.0)
    r.register_agent("b", ["m"], 0.0)
    for i in range(6):  # round robin alternates; a fails, b succeeds
        [d] = r.submit(f"t{i}", "m", 0.0)
        assert isinstance(d, Dispatch)
        r.result(d.agent_id, d.task_id, d.agent_id == "b", 0.0)
    a = r.registry.get("a")
    assert a is not None and a.status is Status.SUSPECT
    assert [x.agent_id for x in r.registry.agents_with("m")] == ["b"]
    r.on_timer(5.0)
    assert a.status is Status.ACTIVE


def test_trust_and_success_rate_follow_outcomes() -> None:
    r = make(trust_prior=0.5)
    r.register_agent("a", ["m"], 0.0)
    state = r.registry.get("a")
    assert state is not None
    r.submit("t1", "m", 0.0)
    r.result("a", "t1", True, 0.010)
    assert state.trust > 0.5 and state.latency_ewma == pytest.approx(0.010)
    before = state.trust
    r.submit("t2", "m", 1.0)
    r.result("a", "t2", False, 1.002)
    assert state.trust < before and state.success_rate < 1.0
    r.penalise_bad_signature("a")
    assert state.trust < before / 2


def test_overloaded_router_sheds_new_tasks_without_blaming_agents() -> None:
    r = make(max_tasks=2)
    r.register_agent("a", ["m"], 0.0)
    r.submit("t1", "m", 0.0)
    r.submit("t2", "m", 0.0)
    [shed] = r.submit("t3", "m", 0.0)
    assert isinstance(shed, Failed) and shed.code == errors.OVERLOADED
    assert r.registry.get("a").failed == 0  # type: ignore[union-attr]
    assert r.stats.shed == 1


def test_same_seed_same_decisions() -> None:
    def trace(seed: int) -> list[str]:
        r = make("power_of_two", seed=seed)
        for i in range(20):
            r.register_agent(f"a{i}", ["m"], 0.0)
        return [dispatched(r.submit(f"t{i}", "m", 0.0))[0] for i in range(200)]

    assert trace(42) == trace(42)
    assert trace(42) != trace(43)


def test_cancel_all_ends_every_task_exactly_once() -> None:
    r = make()
    r.register_agent("a", ["m"], 0.0)
    for i in range(5):
        r.submit(f"t{i}", "m", 0.0)
    ended = r.cancel_all(errors.SHUTTING_DOWN, "bye")
    assert sorted(a.task_id for a in ended) == [f"t{i}" for i in range(5)]
    assert r.tasks_in_flight == 0 and r.registry.get("a").in_flight == 0  # type: ignore[union-attr]
    assert r.cancel_all(errors.SHUTTING_DOWN, "bye") == []


def test_failures_never_hold_out_more_than_the_configured_share_of_agents() -> None:
    r = make(suspect_after_failures=1, max_held_out_ratio=0.5, backoff_base_s=0.0, max_attempts=1)
    for name in "abcd":
        r.register_agent(name, ["m"], 0.0)
    for i in range(40):  # every agent fails everything, as an overloaded fleet would look
        for action in r.submit(f"t{i}", "m", 0.0):
            if isinstance(action, Dispatch):
                r.result(action.agent_id, action.task_id, False, 0.0)
    statuses = Counter(a.status for a in r.registry.agents.values())
    assert statuses[Status.SUSPECT] == 2 and statuses[Status.ACTIVE] == 2
    assert r.stats.failed.get(errors.NO_AGENT, 0) == 0


def test_a_flapping_agent_that_is_the_only_one_left_is_not_held_out() -> None:
    r = make(flap_window_s=100.0, lease_s=1000.0)
    r.register_agent("only", ["m"], 0.0)
    r.agent_lost("only", 1.0)
    r.register_agent("only", ["m"], 1.5)  # a quick restart looks like a flap...
    assert r.registry.get("only").status is Status.ACTIVE  # type: ignore[union-attr]
    assert dispatched(r.submit("t", "m", 1.6)) == ["only"]  # ...but holding it out would only mean no-agent
