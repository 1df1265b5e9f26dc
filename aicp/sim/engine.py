"""One replication: the aicp ``Router`` driven under SimPy time.

The router is the real one (``aicp.router.Router``); this module only carries out
its actions and feeds it events with ``now = env.now``. One clock process sleeps
until ``router.next_deadline()`` and calls ``on_timer``; whenever a call into the
router brings the next deadline forward, the clock is interrupted and re-armed.

Per task the hot path is two SimPy events (arrival, service completion) plus two
per network hop when latency is not zero.
"""

from __future__ import annotations

import functools
import random
import time
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy
from simpy.events import Timeout

from aicp import errors, signing
from aicp.router import Action, AgentDown, Completed, Dispatch, Failed, Router, RouterConfig
from aicp.sim import faults as fault_mod
from aicp.sim import stack as stack_mod
from aicp.sim.agents import SimAgent
from aicp.sim.distributions import Blocks, seconds
from aicp.sim.lifecycle import Lifecycle
from aicp.sim.metrics import COMPLETED, OTHER_FAILURE, OUTCOME_CODES, Records, summarize, timelines
from aicp.sim.network import Link
from aicp.sim.scenario import ConstantDist, ExponentialDist, LognormalDist, Scenario, TraceArrival
from aicp.sim.streams import Stream, TraceStream
from aicp.sim.workload import arrival_times, expected_count, read_trace

# child streams of a replication's SeedSequence
_S_ROUTER, _S_ARRIVAL, _S_SERVICE, _S_NETWORK, _S_UNIFORM, _S_FAULTS, _S_KEYS, _S_STACK = range(8)


def child_seed(ss: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    """A sub-stream that depends only on ``ss``'s identity and ``key`` (never on spawn order)."""
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, *key))


def router_seed(seed: np.random.SeedSequence) -> int:
    """The seed of the router's own ``random.Random`` (strategies, backoff jitter) in this replication."""
    return int(child_seed(seed, _S_ROUTER).generate_state(1, np.uint64)[0])


def router_config(s: Scenario) -> RouterConfig:
    r = s.router
    longest = max([r.deadline_ms] + [w.timeout_ms for w in s.workload if w.timeout_ms is not None]) / 1000.0
    return RouterConfig(
        heartbeat_s=r.heartbeat_s,
        lease_s=r.lease_s,
        attempt_timeout_s=r.timeout_ms / 1000.0,
        default_deadline_s=r.deadline_ms / 1000.0,
        max_deadline_s=max(3600.0, longest),
        max_attempts=r.max_attempts,
        backoff_base_s=r.backoff_base_ms / 1000.0,
        backoff_cap_s=r.backoff_cap_ms / 1000.0,
        retry_budget_ratio=r.retry_budget_ratio,
        trust_prior=r.trust_prior,
        max_tasks=r.max_tasks,
    )


@dataclass
class RunResult:
    summary: dict[str, Any]
    records: dict[str, np.ndarray]
    timelines: dict[str, np.ndarray]
    agents: dict[str, np.ndarray]
    trace: np.ndarray | None = None  # (task, agent, attempt) per dispatch, when asked for
    methods: list[str] = field(default_factory=list)


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        strategy: str,
        seed: np.random.SeedSequence,
        trace: bool = False,
        draws: list[Callable[[], float]] | None = None,
        procs: list[int] | None = None,
    ) -> None:
        """``draws``: one service draw (seconds) per agent, in registration order, replacing the scenario's
        service distribution (a live run's own seeded draws, aicp calibrate's ``same`` column); the stack
        model, if any, still adds its timer rounding and wake-up to each draw. ``procs``: the process of the
        calibrated run whose stalls each agent takes, in registration order (default: the agents split over
        the run's processes in order, as ``aicp bench`` starts them)."""
        s = self.scenario = scenario
        self.strategy = strategy
        self.env = env = simpy.Environment()
        self.router = Router(router_config(s), strategy, random.Random(router_seed(seed)))
        self.real_signing = s.signing == "real"
        self.verify_s = s.verify_cost_us / 1e6
        uniform_rng = np.random.default_rng(child_seed(seed, _S_UNIFORM))
        self.uniform = Blocks(uniform_rng.random)
        lat = s.network.latency
        instant = isinstance(lat, ConstantDist | ExponentialDist | LognormalDist) and lat.mean_ms == 0.0
        latency = seconds(lat, np.random.default_rng(child_seed(seed, _S_NETWORK)), s)
        # the live stack's measured costs (aicp/sim/stack.py), only when the scenario names a calibration
        self.stack = stack_mod.model(s, np.random.default_rng(child_seed(seed, _S_STACK))) if s.calibration else None
        if self.stack is not None:
            self.stack.clock = lambda: env.now  # windowed costs follow the simulated clock
            latency, instant, self.verify_s = self.stack.hop(latency), False, 0.0
        self.link = Link(env, latency, s.network.loss, self.uniform, instant)
        self.methods: list[str] = [w.method for w in s.workload]
        self._method_ids = {m: i for i, m in reversed(list(enumerate(self.methods)))}
        self.agents: list[SimAgent] = []
        cost = (s.verify_cost_us + s.sign_cost_us) / 1e6 if self.stack is None else self.stack.slot_s
        key_rng = np.random.default_rng(child_seed(seed, _S_KEYS))
        for g, group in enumerate(s.agents):
            service = seconds(group.service_time, np.random.default_rng(child_seed(seed, _S_SERVICE, g)), s)
            if self.stack is not None:
                service = self.stack.service(service)
            prefix = group.name or f"g{g}"
            for i in range(group.count):
                if draws is not None:
                    draw = draws[len(self.agents)]
                    service = self.stack.service(draw) if self.stack is not None else draw
                ident = signing.Identity(key_rng.bytes(32)) if self.real_signing else None
                idx = len(self.agents)
                self.agents.append(
                    SimAgent(
                        env,
                        idx,
                        f"{prefix}-{i:04d}",
                        g,
                        list(group.capabilities),
                        group.concurrency,
                        service,
                        group.speed,
                        group.fail_prob,
                        group.trust,
                        cost,
                        ident,
                        self.uniform,
                        self.send_result,
                    )
                )
        intake = self.stack.intake if self.stack is not None else None
        if intake is not None and intake.stalls:
            n_procs = len(intake.stalls)
            for agent, proc in zip(self.agents, procs if procs is not None else stack_mod.agent_processes(len(self.agents), n_procs), strict=True):
                agent.thaw = functools.partial(intake.thaw, proc % n_procs)
        self.by_id = {a.agent_id: a for a in self.agents}
        self.controller = signing.Identity(key_rng.bytes(32)) if self.real_signing else None
        self._task_sigs: dict[int, tuple[bytes, bytes]] = {}
        self._row: dict[str, int] = {}  # router task id -> its record row, while the task is in the router
        self.life = Lifecycle(env, self.router, self.link, self.agents, self, s.network.reconnect_s)
        self.fixed_service: dict[int, float] = {}
        expected = sum(expected_count(w.arrival, s.duration_s) for w in s.workload)
        if s.max_tasks is not None:
            expected = min(expected, s.max_tasks)
        self.records = Records(int(expected * 1.1) + 1024)
        self.trace: array[int] | None = array("q") if trace else None
        self.submitted = 0
        self.ended = 0
        self.stopped = False
        self.arrivals_end_s = s.duration_s  # earlier when max_tasks stops the arrivals
        self._max_tasks = s.max_tasks if s.max_tasks is not None else 1 << 62
        self._streams_left = 0
        self.bad_signatures = 0
        self._armed: float | None = None
        self._rearm_pending = False
        self._in_clock = False
        self._forever = env.event()
        self._drained = env.event()
        self._samples: dict[str, list[float]] = {
            "sample_t_s": [],
            "agents_up": [],
            "agents_active": [],
            "in_flight": [],
            "retries": [],
        }
        self._seed = seed
        self.wall_s = 0.0
        self.on_second: Callable[[float], object] | None = None  # progress hook, called once per simulated second

    # ------------------------------------------------------------------ setup and run
    def run(self) -> RunResult:
        s, env, router = self.scenario, self.env, self.router
        t0 = time.perf_counter()
        for a in self.agents:
            router.register_agent(a.agent_id, a.capabilities, 0.0, concurrency=a.concurrency, trust=a.trust)
        arrivals_rng_parent = child_seed(self._seed, _S_ARRIVAL)
        for w_i, w in enumerate(s.workload):
            rng = np.random.default_rng(child_seed(arrivals_rng_parent, w_i))
            timeout_s = w.timeout_ms / 1000.0 if w.timeout_ms is not None else None
            if isinstance(w.arrival, TraceArrival):
                rows = read_trace(w.arrival, s.resolve(w.arrival.file), s.duration_s)
                for _, method, _ in rows:
                    if method is not None:
                        self.method_index(method)
                items: Iterator[Any] = iter(rows)
            else:
                items = arrival_times(w.arrival, rng, s.duration_s)
            lags: deque[float] | None = None
            if self.stack is not None and self.stack.intake is not None:
                # a calibrated way in: each task reaches the router when the recorded track says, in order
                lags = deque()
                items = stack_mod.shifted(items, self.stack.intake, lags, isinstance(w.arrival, TraceArrival))
            kind = TraceStream if isinstance(w.arrival, TraceArrival) else Stream
            stream: Stream = kind(env, self, items, w_i, timeout_s, lags)
            self._streams_left += 1
            stream.start()
        self._clock = env.process(self._clock_loop())
        phases = np.random.default_rng(child_seed(self._seed, _S_FAULTS, 1)).random(len(self.agents)) * router.config.heartbeat_s
        self.life.start_heartbeats(s.heartbeats, phases.tolist())
        env.process(self._sampler())
        fault_mod.start(env, list(s.faults), np.random.default_rng(child_seed(self._seed, _S_FAULTS)), self.agents, self.life)
        cfg = router.config
        guard = s.duration_s + cfg.max_deadline_s + cfg.attempt_timeout_s * cfg.max_attempts + cfg.lease_s + 60.0
        env.run(until=env.any_of([self._drained, env.timeout(guard)]))
        self.wall_s = time.perf_counter() - t0
        return self.result()

    def result(self, error: str | None = None) -> RunResult:
        """What the run has produced so far (also after an exception, for the record)."""
        s = self.scenario
        rec = self.records.arrays()
        end = max(self.env.now, 1e-9)
        summary = summarize(rec, s.warmup_s, min(s.duration_s, self.arrivals_end_s))
        samples = {k: np.asarray(v, dtype=np.float64) for k, v in self._samples.items()}
        if samples["retries"].size:
            samples["retries"] = np.diff(samples["retries"], prepend=0.0)
        busy = np.array([a.busy_time for a in self.agents])
        conc = np.array([a.concurrency for a in self.agents], dtype=np.float64)
        util = busy / (conc * end)
        states = {st.agent_id: st for st in self.router.registry.agents.values()}
        trust = np.array([states[a.agent_id].trust if a.agent_id in states else np.nan for a in self.agents])
        summary.update(
            strategy=self.strategy,
            submitted=self.submitted,
            ended=self.ended,
            lost_total=self.submitted - self.ended,
            router=self.router.stats.as_dict(),
            bad_signatures=self.bad_signatures,
            link={"delivered": self.link.delivered, "dropped": self.link.dropped},
            sim_end_s=self.env.now,
            wall_s=self.wall_s,
            tasks_per_wall_s=self.submitted / self.wall_s if self.wall_s > 0 else None,
            utilisation={"mean": float(util.mean()), "max": float(util.max())},
            error=error,
        )
        agents = {
            "busy_time_s": busy,
            "utilisation": util,
            "served": np.array([a.served for a in self.agents]),
            "trust": trust,
            "group": np.array([a.group for a in self.agents]),
        }
        tl = timelines(rec, samples, s.window_s, end)
        trace = np.frombuffer(self.trace, dtype=np.int64).reshape(-1, 3).copy() if self.trace is not None else None
        return RunResult(summary, rec, tl, agents, trace, list(self.methods))

    def method_index(self, method: str) -> int:
        idx = self._method_ids.get(method)
        if idx is None:
            idx = self._method_ids[method] = len(self.methods)
            self.methods.append(method)
        return idx

    # ------------------------------------------------------------------ router side
    def submit(self, method: int, timeout_s: float | None, service_s: float | None, lag_s: float = 0.0) -> None:
        """One arrival: a record row, the router's ``submit``, its actions, the clock. The hot path,
        written flat (``Records.add``, ``apply`` for the common single ``Dispatch``, and ``rearm``
        inlined)."""
        now = self.env.now
        rec = self.records
        i = rec.n
        if i == rec.capacity:
            rec.grow()
        # with a calibration, the time outside the router (load generator, its hops) counts from an earlier start
        # (and, with a calibrated way in, from the intended time, before the lag that brought it here now)
        rec.arrival[i] = now if self.stack is None else now - self.stack.client() - lag_s
        if method:
            rec.method[i] = method
        self.submitted = rec.n = i + 1
        if service_s is not None:
            self.fixed_service[i] = service_s
        if self.controller is not None:
            body = b"task:%d" % i
            self._task_sigs[i] = (body, self.controller.sign(body))
        task_id = str(i)
        self._row[task_id] = i
        router = self.router
        actions = router.submit(task_id, self.methods[method], now, timeout_s)
        a = actions[0] if len(actions) == 1 else None
        if type(a) is Dispatch and self.trace is None and self.controller is None:
            # submit dispatches only the task it was given, and a first attempt
            agent = self.by_id[a.agent_id]
            rec.dispatch[i] = now
            rec.agent[i] = agent.index
            rec.attempts[i] = 1
            self.link.send(agent.index, agent.receive, (task_id, self.fixed_service.get(i) if self.fixed_service else None))
        else:
            self.apply(actions, now)
        if i + 1 >= self._max_tasks and not self.stopped:
            self.stopped = True
            self.arrivals_end_s = now
        # rearm(), inlined
        if not (self._in_clock or self._rearm_pending):
            d = router.next_deadline()
            if d is not None and (self._armed is None or d < self._armed):
                self._rearm_pending = True
                self._clock.interrupt()

    def stream_done(self) -> None:
        self._streams_left -= 1
        if self._streams_left <= 0:
            self.stopped = True
            self._check_drained()

    def send_result(self, agent: SimAgent, task: str, ok: bool) -> None:
        if self.real_signing:
            body = b"%s:%d:%d" % (task.encode(), ok, agent.index)
            self.link.send(agent.index, self._on_result_signed, (agent, task, ok, body, agent.sign(body)), self.verify_s)
        else:
            # a calibrated way in: the router reads the result as late as it reads arrivals at that moment
            late = self.stack.intake.backlog(self.env.now) if self.stack is not None and self.stack.intake is not None else 0.0
            self.link.send(agent.index, self._on_result, (agent, task, ok, agent.misbehave), self.verify_s + late)

    def _on_result_signed(self, message: tuple[SimAgent, str, bool, bytes, bytes]) -> None:
        agent, task, ok, body, sig = message
        assert agent.identity is not None
        try:
            signing.verify(agent.identity.public_key, body, sig)
            bad = False
        except errors.VerifyError:
            bad = True
        self._on_result((agent, task, ok, bad))

    def _on_result(self, message: tuple[SimAgent, str, bool, bool]) -> None:
        agent, task, ok, bad = message
        router = self.router
        now = self.env.now
        if bad:
            self.bad_signatures += 1
            router.penalise_bad_signature(agent.agent_id)
            _, actions = router.result(agent.agent_id, task, False, now, errors.INVALID_SIGNATURE)
        else:
            _, actions = router.result(agent.agent_id, task, ok, now)
            if ok:
                # A verified success only removes state from the router: no deadline can come forward.
                a = actions[0] if len(actions) == 1 else None
                if type(a) is Completed:
                    # apply(), inlined for the common case
                    i = self._row.pop(task)
                    rec = self.records
                    rec.end[i] = now
                    rec.outcome[i] = COMPLETED
                    rec.attempts[i] = a.attempts
                    self.ended += 1
                    if self.stopped or self.fixed_service or self._task_sigs:
                        self._ended(i)
                elif actions:
                    self.apply(actions, now)
                return
        if actions:
            self.apply(actions, now)
        self.rearm()

    def _deliver_signed(self, message: tuple[SimAgent, str, int, float | None]) -> None:
        agent, task_id, i, fixed = message
        assert self.controller is not None
        body, sig = self._task_sigs[i]
        signing.verify(self.controller.public_key, body, sig)  # an honest controller: must pass
        agent.receive((task_id, fixed))

    def apply(self, actions: list[Action], now: float | None = None) -> None:
        """Carry out the router's actions: send dispatches over the link, record ends, close dropped agents."""
        rec = self.records
        if now is None:
            now = self.env.now
        for a in actions:
            kind = type(a)
            if kind is Dispatch:
                task_id = a.task_id  # type: ignore[union-attr]
                i = self._row[task_id]
                agent = self.by_id[a.agent_id]  # type: ignore[union-attr]
                attempt = a.attempt  # type: ignore[union-attr]
                if attempt == 1:
                    rec.dispatch[i] = now
                rec.agent[i] = agent.index
                rec.attempts[i] = attempt
                if self.trace is not None:
                    self.trace.extend((i, agent.index, attempt))
                fixed = self.fixed_service.get(i) if self.fixed_service else None
                if self.controller is not None:
                    self.link.send(agent.index, self._deliver_signed, (agent, task_id, i, fixed))
                else:
                    self.link.send(agent.index, agent.receive, (task_id, fixed))
            elif kind is Completed:
                i = self._row.pop(a.task_id)  # type: ignore[union-attr]
                rec.end[i] = now
                rec.outcome[i] = COMPLETED
                rec.attempts[i] = a.attempts  # type: ignore[union-attr]
                self.ended += 1
                if self.stopped or self.fixed_service or self._task_sigs:
                    self._ended(i)
            elif kind is Failed:
                i = self._row.pop(a.task_id)  # type: ignore[union-attr]
                rec.end[i] = now
                rec.outcome[i] = OUTCOME_CODES.get(a.code, OTHER_FAILURE)  # type: ignore[union-attr]
                rec.attempts[i] = a.attempts  # type: ignore[union-attr]
                self.ended += 1
                self._ended(i)
            elif kind is AgentDown:
                self.life.agent_down(self.by_id[a.agent_id])  # type: ignore[union-attr]

    def _ended(self, i: int) -> None:
        """Clean-up after a task ended (``self.ended`` already counts it)."""
        if self.fixed_service:
            self.fixed_service.pop(i, None)
        if self._task_sigs:
            self._task_sigs.pop(i, None)
        if self.stopped and self.ended == self.submitted:
            self._check_drained()

    def _check_drained(self) -> None:
        if self.stopped and self._streams_left <= 0 and self.ended == self.submitted and not self._drained.triggered:
            self._drained.succeed()

    # ------------------------------------------------------------------ the one clock
    def rearm(self) -> None:
        """After a call into the router: wake the clock if the next deadline moved earlier."""
        if self._in_clock or self._rearm_pending:
            return
        d = self.router.next_deadline()
        if d is not None and (self._armed is None or d < self._armed):
            self._rearm_pending = True
            self._clock.interrupt()

    def _clock_loop(self) -> Generator[simpy.Event, None, None]:
        env, router = self.env, self.router
        while True:
            d = router.next_deadline()
            self._armed = d
            self._rearm_pending = False
            try:
                if d is None:
                    yield self._forever
                else:
                    yield Timeout(env, d - env.now if d > env.now else 0.0)
            except simpy.Interrupt:
                continue
            self._in_clock = True
            try:
                assert d is not None
                actions = router.on_timer(d if d > env.now else env.now)
                if actions:
                    self.apply(actions)
            finally:
                self._in_clock = False

    # ------------------------------------------------------------------ timelines
    def _sampler(self) -> Generator[simpy.Event, None, None]:
        env, router, smp = self.env, self.router, self._samples
        while True:
            yield env.timeout(1.0)
            smp["sample_t_s"].append(env.now)
            smp["agents_up"].append(self.life.up_count)
            smp["agents_active"].append(router.registry.count_by_status()["active"])
            smp["in_flight"].append(router.tasks_in_flight)
            smp["retries"].append(router.stats.retries)
            if self.on_second is not None:
                self.on_second(env.now)
