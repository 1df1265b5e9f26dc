"""The routing state machine: tasks in, dispatch decisions and outcomes out.

No I/O and no clock: every entry point takes ``now`` (seconds, any epoch, never
decreasing) and returns a list of actions for the driver to carry out. The driver
calls ``on_timer(now)`` at ``next_deadline()``. Heartbeat leases, attempt
timeouts, retry backoff and hold-outs are all deadlines here, so they behave the
same under asyncio and under SimPy. Lease checks fall on multiples of a step
(``RouterConfig.lease_check_s``), so the agents' leases ask for at most one
wake-up per step however many agents there are (with 10,000 agents renewing every
30 s against a 90 s lease: 1 a second, against 167 with a timer each).

Task life cycle (one row per state, see docs/PROTOCOL.md for the diagram)::

    submit ──▶ DISPATCHED ──result ok──────────────▶ Completed   (ends)
                 │  ▲   └──result fail / timeout / agent lost──▶ BACKOFF
                 │  └──────────── backoff elapsed ─────────────────┘
                 └──no attempts, no time, no budget, no agent──▶ Failed(code) (ends)

Every submitted task ends exactly once: it leaves ``_tasks`` in the same step
that emits its ``Completed`` or ``Failed`` action.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterable

import msgspec

from aicp import errors, trace
from aicp.registry import AgentState, Registry, Status
from aicp.strategies import Strategy
from aicp.strategies import get as get_strategy


class RouterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every knob of the routing core. Durations in seconds."""

    heartbeat_s: float = 30.0  # the interval agents are told to use
    lease_s: float = 90.0  # an agent not heard from for this long is dead
    #: lease checks fall on multiples of min(this, lease_s / 32): an expiry is noticed up to that much late, and the
    #: leases of any number of agents cost at most one wake-up per multiple (0: each at its own time, one wake-up each)
    lease_check_s: float = 1.0
    attempt_timeout_s: float = 5.0  # one dispatch's time limit
    default_deadline_s: float = 30.0  # a task's overall limit when it names none
    max_deadline_s: float = 3600.0
    max_attempts: int = 3
    backoff_base_s: float = 0.005  # full jitter: uniform(0, min(cap, base * 2**(attempt-1)))
    backoff_cap_s: float = 1.0
    retry_budget_ratio: float = 0.2  # each submit earns this many retry tokens
    retry_budget_reserve: float = 10.0  # tokens at start (lets a quiet router still retry)
    retry_budget_max: float = 1000.0
    trust_prior: float = 0.5
    trust_gain: float = 0.05  # success: trust += gain * (1 - trust)
    trust_loss: float = 0.2  # failure or timeout: trust -= loss * trust
    bad_signature_loss: float = 0.5  # a forged or broken signature: trust -= this * trust
    latency_alpha: float = 0.2  # EWMA weight of a new latency sample (peaks are taken at once)
    success_alpha: float = 0.05
    suspect_after_failures: int = 5  # consecutive failures before an agent is held out
    max_held_out_ratio: float = 0.5  # never hold out more than this share of a capability's live agents
    holdout_base_s: float = 1.0  # hold-out doubles with every flap
    holdout_cap_s: float = 60.0
    flap_window_s: float = 60.0  # re-registering this soon after dying counts as a flap
    max_tasks: int = 100_000  # tasks in the router at once; beyond this, new ones get `overloaded`
    max_dead_agents: int = 10_000  # dead agents remembered (their stats and flap history)


# ----------------------------------------------------------------------------- actions
class Dispatch(msgspec.Struct, frozen=True, gc=False):
    """Send task ``task_id`` to agent ``agent_id`` (``attempt`` counts from 1)."""

    task_id: str
    agent_id: str
    attempt: int


class Completed(msgspec.Struct, frozen=True, gc=False):
    """The task ended with a verified result from ``agent_id``."""

    task_id: str
    agent_id: str
    attempts: int


class Failed(msgspec.Struct, frozen=True, gc=False):
    """The task ended with an error ``code``."""

    task_id: str
    code: str
    message: str
    attempts: int


class AgentDown(msgspec.Struct, frozen=True, gc=False):
    """The router declared ``agent_id`` dead (lease expired): close its connection."""

    agent_id: str
    reason: str


Action = Dispatch | Completed | Failed | AgentDown

# result() verdicts
ACCEPTED = "accepted"
LATE = "late"
NOT_ASSIGNED = "not-assigned"

_DISPATCHED = 1
_BACKOFF = 2

_T_TASK = 0
_T_LEASE = 1
_T_HOLDOUT = 2


class _Task:
    __slots__ = ("agent", "attempts", "created", "deadline", "dispatched_at", "id", "last_code", "last_message", "local_only", "max_attempts", "method", "phase", "token", "tried")

    def __init__(self, task_id: str, method: str, now: float, deadline: float, max_attempts: int, local_only: bool = False) -> None:
        self.id = task_id
        self.method = method
        self.created = now
        self.deadline = deadline
        self.attempts = 0
        self.agent: AgentState | None = None
        self.dispatched_at = now
        self.tried: list[str] = []
        self.phase = 0
        self.token = 0
        self.last_code = errors.NO_AGENT
        self.last_message = ""
        self.max_attempts = max_attempts
        self.local_only = local_only


class RouterStats:
    """Counters the drivers export (Prometheus live, summaries in the simulator)."""

    __slots__ = ("agents_lost", "completed", "dispatched", "failed", "late_results", "not_assigned", "retries", "shed", "submitted")

    def __init__(self) -> None:
        self.submitted = 0
        self.dispatched = 0
        self.completed = 0
        self.failed: dict[str, int] = {}
        self.retries = 0
        self.late_results = 0
        self.not_assigned = 0
        self.shed = 0
        self.agents_lost = 0

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


class Router:
    """Registry + strategy + task state machine. Drivers feed it; it never waits."""

    def __init__(self, config: RouterConfig | None = None, strategy: Strategy | str = "round_robin", rng: random.Random | None = None) -> None:
        self.config = config or RouterConfig()
        self.strategy: Strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
        self.rng = rng if rng is not None else random.Random(0)
        self.registry = Registry()
        self.stats = RouterStats()
        self.trace: trace.Sink | None = None  # hold-outs go here when recording (RouterProtocol.record sets it)
        self._tasks: dict[str, _Task] = {}
        # Timers are (when, seq, kind, key, token) in two heaps: the tasks' (attempt timeouts and
        # backoffs, one per task in the router) and the agents' (leases and hold-outs, about one per
        # agent), so a task's timer costs O(log tasks), whatever the number of agents. Both are
        # consumed in (when, seq) order, as one heap would be: seq is unique.
        self._timers: list[tuple[float, int, int, str, int]] = []
        self._agent_timers: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        #: lease timers are rounded up to multiples of this (``_lease_due``), so the agents whose leases run out in one
        #: such step share one wake-up: at most 1 / _lease_step wake-ups a second for leases, whatever the number of agents
        self._lease_step = min(self.config.lease_check_s, self.config.lease_s / 32.0)
        self._retry_tokens = self.config.retry_budget_reserve
        self._dead: deque[str] = deque()
        #: cluster mode: capability -> ids of the remote candidates for it (other routers' capacity,
        #: ``aicp.cluster``), at most one per other router. A ``local_only`` task excludes them.
        self.remote_ids: dict[str, list[str]] = {}
        self._remote: set[str] = set()

    # ------------------------------------------------------------------ queries
    def __contains__(self, task_id: str) -> bool:
        return task_id in self._tasks

    @property
    def tasks_in_flight(self) -> int:
        return len(self._tasks)

    def assigned_agent(self, task_id: str) -> str | None:
        task = self._tasks.get(task_id)
        return task.agent.agent_id if task is not None and task.agent is not None else None

    def tasks_on(self, agent_id: str) -> list[str]:
        state = self.registry.get(agent_id)
        return list(state.tasks) if state is not None and state.tasks else []

    def is_remote(self, agent_id: str) -> bool:
        return agent_id in self._remote

    def agents_by_status(self) -> dict[str, int]:
        """Like ``registry.count_by_status()`` without remote candidates. O(statuses + remote candidates)."""
        counts = self.registry.count_by_status()
        for agent_id in self._remote:
            state = self.registry.get(agent_id)
            if state is not None:
                counts[state.status.value] -= 1
        return counts

    def count_on(self, agent_id: str) -> int:
        """How many of this router's tasks are on ``agent_id`` now. O(1)."""
        state = self.registry.get(agent_id)
        return len(state.tasks) if state is not None and state.tasks else 0

    def attempt_deadline(self, task_id: str, now: float) -> float | None:
        """When the task's current attempt times out (``None``: not in the router)."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        limit = task.dispatched_at + self.config.attempt_timeout_s if not task.local_only else task.deadline
        return limit if limit < task.deadline else task.deadline

    def next_deadline(self) -> float | None:
        """When ``on_timer`` must next be called, or ``None`` if nothing is pending."""
        timers, tasks = self._timers, self._tasks
        first: float | None = None
        while timers:
            entry = timers[0]
            task = tasks.get(entry[3])  # _timer_live(entry), inlined: every entry here is a task's
            if task is not None and task.token == entry[4]:
                first = entry[0]
                break
            heapq.heappop(timers)
        timers, agents = self._agent_timers, self.registry.agents
        while timers:
            entry = timers[0]
            if entry[2] == _T_LEASE:  # inlined too
                state = agents.get(entry[3])
                live = state is not None and state.epoch == entry[4] and state.status is not Status.DEAD
            else:
                live = self._timer_live(entry)
            if live:
                return entry[0] if first is None or entry[0] < first else first
            heapq.heappop(timers)
        return first

    # ------------------------------------------------------------------ agents
    def register_agent(
        self, agent_id: str, capabilities: Iterable[str], now: float, concurrency: int = 1, trust: float | None = None, remote: bool = False
    ) -> list[Action]:
        """Add an agent, or bring a dead one back. A live agent re-registering just updates.

        ``remote`` marks another router's capacity in cluster mode (``aicp.cluster``): tasks
        submitted with ``local_only`` never go to it.
        """
        cfg = self.config
        state = self.registry.get(agent_id)
        if state is None:
            state = AgentState(agent_id, capabilities, concurrency, cfg.trust_prior if trust is None else trust, now, cfg.lease_s)
            if remote:
                self._remote.add(agent_id)
                for cap in state.capabilities:
                    self.remote_ids.setdefault(cap, []).append(agent_id)
            self.registry.add(state)
            self._push(self._lease_due(state.lease_expiry), _T_LEASE, agent_id, state.epoch)
        else:
            state.concurrency = max(1, concurrency)
            state.lease_expiry = now + cfg.lease_s
            state.last_seen = now
            if state.status is Status.DEAD:
                state.epoch += 1
                recent = state.died_at is not None and now - state.died_at <= cfg.flap_window_s
                state.flaps = state.flaps + 1 if recent else 0
                state.died_at = None
                self.registry.set_capabilities(state, capabilities)
                if state.flaps and self._may_hold_out(state):
                    self._hold_out(state, now)
                else:
                    self.registry.set_status(state, Status.ACTIVE)
                self._push(self._lease_due(state.lease_expiry), _T_LEASE, agent_id, state.epoch)
            elif tuple(capabilities) != state.capabilities:
                self.registry.set_capabilities(state, capabilities)
        return []

    def heartbeat(self, agent_id: str, now: float, load: int = 0) -> None:
        state = self.registry.get(agent_id)
        if state is None or state.status is Status.DEAD:
            return
        state.lease_expiry = now + self.config.lease_s
        state.last_seen = now
        state.reported_load = load

    def renew_lease(self, agent_id: str, now: float) -> None:
        """The agent was heard from (any verified frame of its own, PROTOCOL.md §6): its lease runs from ``now``. O(1).

        The lease timer is not moved: when it fires it finds the later expiry and is pushed again.
        """
        state = self.registry.get(agent_id)
        if state is not None and state.status is not Status.DEAD:
            state.lease_expiry = now + self.config.lease_s
            state.last_seen = now

    def drain_agent(self, agent_id: str, now: float) -> None:
        """Take no new tasks to this agent; its in-flight tasks run on."""
        state = self.registry.get(agent_id)
        if state is not None and state.status is not Status.DEAD:
            self.registry.set_status(state, Status.DRAINING)

    def agent_lost(self, agent_id: str, now: float, reason: str = "connection lost") -> list[Action]:
        """The agent is gone (disconnect, deregister, lease): its tasks fail over."""
        state = self.registry.get(agent_id)
        if state is None or state.status is Status.DEAD:
            return []
        self.registry.set_status(state, Status.DEAD)
        state.died_at = now
        state.epoch += 1
        self.stats.agents_lost += 1
        actions: list[Action] = []
        on_agent, state.tasks = state.tasks, None
        for task in list(on_agent.values()) if on_agent else ():
            self._release(task)
            self._penalise(state, now)
            self._retry_or_fail(task, errors.AGENT_FAILED, f"agent {agent_id} {reason}", now, actions)
        # Only after its tasks have failed over: remembering may evict dead agents, this one too.
        self._remember_dead(agent_id)
        return actions

    def penalise_bad_signature(self, agent_id: str) -> None:
        """An agent sent a result whose signature failed: trust falls hard."""
        state = self.registry.get(agent_id)
        if state is not None:
            state.bad_signatures += 1
            state.trust = state._trust - self.config.bad_signature_loss * state._trust

    # ------------------------------------------------------------------ tasks
    def submit(
        self, task_id: str, method: str, now: float, timeout_s: float | None = None, *, local_only: bool = False, max_attempts: int | None = None
    ) -> list[Action]:
        """Accept a task and dispatch it, or end it at once (``overloaded``, ``no-agent``).

        Cluster mode: a task forwarded by another router comes with ``local_only`` (never
        forwarded again) and ``max_attempts=1`` (its owner retries).
        """
        tasks = self._tasks
        if task_id in tasks:
            raise errors.LocalError(f"task {task_id!r} is already in the router")
        cfg = self.config
        stats = self.stats
        stats.submitted += 1
        if len(tasks) >= cfg.max_tasks:
            stats.shed += 1
            return [self._count_fail(Failed(task_id, errors.OVERLOADED, "router is at max_tasks", 0))]
        budget = timeout_s if timeout_s is not None else cfg.default_deadline_s
        if budget > cfg.max_deadline_s:
            budget = cfg.max_deadline_s
        task = _Task(task_id, method, now, now + budget, cfg.max_attempts if max_attempts is None else max_attempts, local_only)
        tasks[task_id] = task
        tokens = self._retry_tokens + cfg.retry_budget_ratio
        self._retry_tokens = tokens if tokens < cfg.retry_budget_max else cfg.retry_budget_max
        actions: list[Action] = []
        self._dispatch(task, now, actions)
        return actions

    def result(self, agent_id: str, task_id: str, ok: bool, now: float, reason: str = "") -> tuple[str, list[Action]]:
        """An agent answered. Returns the verdict (ACCEPTED, LATE, NOT_ASSIGNED) and actions."""
        task = self._tasks.get(task_id)
        if task is None or task.agent is None or task.agent.agent_id != agent_id:
            if task is not None and agent_id not in task.tried:
                self.stats.not_assigned += 1
                return NOT_ASSIGNED, []
            self.stats.late_results += 1
            return LATE, []
        agent = task.agent
        # _release(task), inlined: this runs once per task
        task.agent = None
        agent.add_in_flight(-1)
        on_agent = agent.tasks
        if on_agent is not None:
            on_agent.pop(task_id, None)
        cfg = self.config
        sample = now - task.dispatched_at
        ewma = agent._latency  # latency_ewma
        if sample >= ewma:
            agent._latency = sample  # peak: react to slowness at once
        else:
            agent._latency = ewma + cfg.latency_alpha * (sample - ewma)
        if ok:
            agent.succeeded += 1
            agent.consecutive_failures = 0
            agent.success_rate += cfg.success_alpha * (1.0 - agent.success_rate)
            trust = agent._trust
            agent.trust = trust + cfg.trust_gain * (1.0 - trust)
            del self._tasks[task_id]
            self.stats.completed += 1
            return ACCEPTED, [Completed(task_id, agent_id, task.attempts)]
        agent.failed += 1
        self._penalise(agent, now)
        actions: list[Action] = []
        self._retry_or_fail(task, errors.AGENT_FAILED, reason or f"agent {agent_id} failed the task", now, actions)
        return ACCEPTED, actions

    def cancel_all(self, code: str, message: str) -> list[Action]:
        """End every task still in the router with ``code`` (used at shutdown)."""
        actions: list[Action] = []
        for task in list(self._tasks.values()):
            self._release(task)
            actions.append(self._end(task, code, message))
        return actions

    # ------------------------------------------------------------------ time
    def on_timer(self, now: float) -> list[Action]:
        """Run every deadline that is due at ``now``."""
        actions: list[Action] = []
        task_timers, agent_timers = self._timers, self._agent_timers
        pop = heapq.heappop
        while True:  # the due entries of both heaps, merged in (when, seq) order
            if task_timers and task_timers[0][0] <= now:
                heap = agent_timers if agent_timers and agent_timers[0] < task_timers[0] else task_timers
            elif agent_timers and agent_timers[0][0] <= now:
                heap = agent_timers
            else:
                break
            _, _, kind, key, token = pop(heap)
            if kind == _T_TASK:
                task = self._tasks.get(key)
                if task is None or task.token != token:
                    continue
                if task.phase == _BACKOFF:
                    self._dispatch(task, now, actions)
                    continue
                # the attempt timed out
                agent = task.agent
                assert agent is not None
                self._release(task)
                agent.timed_out += 1
                self._penalise(agent, now)
                self._retry_or_fail(task, errors.TIMEOUT, f"agent {agent.agent_id} did not answer in time", now, actions)
            elif kind == _T_LEASE:
                state = self.registry.get(key)
                if state is None or state.epoch != token or state.status is Status.DEAD:
                    continue
                if now >= state.lease_expiry:
                    actions.append(AgentDown(key, "lease expired"))
                    actions.extend(self.agent_lost(key, now, "lease expired"))
                else:
                    self._push(self._lease_due(state.lease_expiry), _T_LEASE, key, token)
            else:  # _T_HOLDOUT
                state = self.registry.get(key)
                if state is not None and state.epoch == token and state.status is Status.SUSPECT:
                    self.registry.set_status(state, Status.ACTIVE)
        return actions

    # ------------------------------------------------------------------ internals
    def _push(self, when: float, kind: int, key: str, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers if kind == _T_TASK else self._agent_timers, (when, self._seq, kind, key, token))

    def _lease_due(self, expiry: float) -> float:
        """When to check a lease that runs out at ``expiry``: the next multiple of ``_lease_step`` (never before ``expiry``)."""
        step = self._lease_step
        if step <= 0.0:
            return expiry
        due = math.ceil(expiry / step) * step
        return due if due >= expiry else due + step

    def _timer_live(self, entry: tuple[float, int, int, str, int]) -> bool:
        _, _, kind, key, token = entry
        if kind == _T_TASK:
            task = self._tasks.get(key)
            return task is not None and task.token == token
        state = self.registry.get(key)
        if state is None or state.epoch != token:
            return False
        return state.status is not Status.DEAD if kind == _T_LEASE else state.status is Status.SUSPECT

    def _dispatch(self, task: _Task, now: float, actions: list[Action]) -> None:
        method = task.method
        candidates = self.registry.agents_with(method)
        exclude = tried = task.tried
        remote = self.remote_ids.get(method) if task.local_only else None
        if remote:  # forwarded here (cluster mode): never on to another router; a few ids, O(m log n)
            exclude = [*tried, *remote]
        agent = None
        if candidates:
            agent = self.strategy.choose(method, candidates, self.rng, exclude)
            if agent is None and tried:
                # Every capable agent was tried: allow any but the one that failed last.
                agent = self.strategy.choose(method, candidates, self.rng, [*tried[-1:], *(remote or ())])
        if agent is None:
            if task.attempts == 0:
                actions.append(self._end(task, errors.NO_AGENT, f"no active agent has capability {task.method!r}"))
            else:
                actions.append(self._end(task, task.last_code, task.last_message))
            return
        agent_id = agent.agent_id
        task_id = task.id
        attempts = task.attempts = task.attempts + 1
        token = task.token = task.token + 1
        task.agent = agent
        task.phase = _DISPATCHED
        task.dispatched_at = now
        tried.append(agent_id)
        agent.add_in_flight(1)
        agent.dispatched += 1
        self.stats.dispatched += 1
        by_agent = agent.tasks
        if by_agent is None:
            by_agent = agent.tasks = {}
        by_agent[task_id] = task
        # A task forwarded by its owner (cluster mode) has one attempt, limited by the time the owner gave it.
        deadline = task.deadline
        limit = now + self.config.attempt_timeout_s if not task.local_only else deadline
        self._seq = seq = self._seq + 1  # _push, inlined
        heapq.heappush(self._timers, (limit if limit < deadline else deadline, seq, _T_TASK, task_id, token))
        actions.append(Dispatch(task_id, agent_id, attempts))

    def _release(self, task: _Task) -> None:
        """Take the task off its agent: in-flight count and the per-agent index."""
        agent = task.agent
        if agent is not None:
            agent.add_in_flight(-1)
            task.agent = None
            on_agent = agent.tasks
            if on_agent is not None:
                on_agent.pop(task.id, None)

    def _retry_or_fail(self, task: _Task, code: str, message: str, now: float, actions: list[Action]) -> None:
        cfg = self.config
        task.last_code, task.last_message = code, message
        if task.attempts >= task.max_attempts:
            actions.append(self._end(task, code, f"{message} (after {task.attempts} attempts)"))
            return
        if now >= task.deadline:
            actions.append(self._end(task, errors.TIMEOUT, f"deadline passed; last error: {message}"))
            return
        if self._retry_tokens < 1.0 - 1e-9:  # tolerate float sums such as 10 * 0.1
            actions.append(self._end(task, code, f"{message} (retry budget exhausted)"))
            return
        delay = self.rng.random() * min(cfg.backoff_cap_s, cfg.backoff_base_s * (1 << min(task.attempts - 1, 30)))
        if now + delay >= task.deadline:
            actions.append(self._end(task, errors.TIMEOUT, f"no time left to retry; last error: {message}"))
            return
        self._retry_tokens -= 1.0
        self.stats.retries += 1
        task.phase = _BACKOFF
        task.token += 1
        self._push(now + delay, _T_TASK, task.id, task.token)

    def _end(self, task: _Task, code: str, message: str) -> Failed:
        del self._tasks[task.id]
        return self._count_fail(Failed(task.id, code, message, task.attempts))

    def _count_fail(self, failed: Failed) -> Failed:
        self.stats.failed[failed.code] = self.stats.failed.get(failed.code, 0) + 1
        return failed

    def _penalise(self, agent: AgentState, now: float) -> None:
        cfg = self.config
        agent.trust = agent._trust - cfg.trust_loss * agent._trust
        agent.success_rate -= cfg.success_alpha * agent.success_rate
        agent.consecutive_failures += 1
        if agent.consecutive_failures >= cfg.suspect_after_failures and agent.status is Status.ACTIVE:
            agent.consecutive_failures = 0
            if self._may_hold_out(agent):
                agent.flaps += 1
                self._hold_out(agent, now)

    def _may_hold_out(self, agent: AgentState) -> bool:
        """Like Envoy's max_ejection_percent: when overload makes every agent look faulty, or a
        restart makes every agent look like it flapped, holding them all out would turn a
        slow or brief problem into `no-agent` for everyone. The last capable agent is never held out.
        O(c) from the registry's counts (c = the agent's capabilities); suspects are never dead."""
        registry = self.registry
        for cap in agent.capabilities:
            live = registry.count_with(cap) - registry.count_with(cap, Status.DEAD) + (agent.status is Status.DEAD)
            held = registry.count_with(cap, Status.SUSPECT)
            if held + 1 > self.config.max_held_out_ratio * live:
                return False
        return True

    def _hold_out(self, agent: AgentState, now: float) -> None:
        cfg = self.config
        hold = min(cfg.holdout_cap_s, cfg.holdout_base_s * (1 << min(max(agent.flaps - 1, 0), 30)))
        agent.holdout_until = now + hold
        self.registry.set_status(agent, Status.SUSPECT)
        self._push(agent.holdout_until, _T_HOLDOUT, agent.agent_id, agent.epoch)
        if self.trace is not None:
            self.trace(trace.HoldOut(t=now, agent=agent.agent_id, until=agent.holdout_until))

    def _remember_dead(self, agent_id: str) -> None:
        self._dead.append(agent_id)
        while len(self._dead) > self.config.max_dead_agents:
            old = self._dead.popleft()
            state = self.registry.get(old)
            if old != agent_id and state is not None and state.status is Status.DEAD:  # an older entry of a re-dead agent
                self.registry.remove(old)
                if old in self._remote:
                    self._remote.discard(old)
                    for cap in state.capabilities:
                        self.remote_ids[cap].remove(old)
                state.tasks = None
