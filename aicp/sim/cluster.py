"""Several routers as one under SimPy time: the real ``Router`` and ``ClusterView`` per router, simulated links between.

A scenario with ``[[routers]] count = N`` runs here (``aicp sim`` picks it). Each
router is an ``aicp.router.Router`` plus an ``aicp.cluster.ClusterView`` — the same
code the live routers run — and this driver only carries messages:

* summaries every ``publish_interval_ms``, to every other router, ``latency_ms`` later;
* a ``Dispatch`` to a remote candidate (``~R~method``) is a forwarded task: router R
  submits it ``local_only`` with one attempt, and sends its ``Completed``/``Failed``
  back to the owner, whose ``Router.result`` on the candidate ends or retries it;
* tasks arrive at the routers in turn (controllers spread evenly); agents are placed
  by ``placement`` weights, each group alike.

Faults on routers: ``crash`` drops the router with everything in it; its agents lose
their work and register at the next live router after ``network.reconnect_s``, and its
controllers re-send their pending tasks there under the same ids (the task keeps its
deadline and its one record, as live). ``partition`` cuts a router off from the other
routers only. Faults on agents (``[[faults]]``: crash, recover, flap, partition, heal,
slow, heartbeat_loss, misbehave) mean what they mean with one router
(``aicp.sim.lifecycle``), at the router the agent is connected to (``_AgentLife``). Optional router CPU (``task_cpu_us``, ``hop_cpu_us``) makes each router a
single FIFO server, for the throughput curve as routers are added.

Every task ends once: its record is written only by its current owner; an outcome
for a task that already ended is counted in ``duplicate_outcomes`` (always 0 so far).
"""

from __future__ import annotations

import random
import time
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy
from simpy.events import Timeout

from aicp import errors
from aicp.cluster import REMOTE_MARK, ClusterConfig, ClusterView, Summary, candidate_id
from aicp.router import Action, AgentDown, Completed, Dispatch, Failed, Router
from aicp.sim import faults as fault_mod
from aicp.sim.agents import SimAgent
from aicp.sim.distributions import Blocks, seconds
from aicp.sim.engine import RunResult, child_seed, router_config, router_seed
from aicp.sim.metrics import COMPLETED, OTHER_FAILURE, OUTCOME_CODES, Records, summarize, timelines
from aicp.sim.network import Link
from aicp.sim.scenario import ConstantDist, ExponentialDist, LognormalDist, Routers, Scenario, TraceArrival
from aicp.sim.streams import Stream, TraceStream
from aicp.sim.workload import arrival_times, expected_count, read_trace

_S_ROUTER, _S_ARRIVAL, _S_SERVICE, _S_NETWORK, _S_UNIFORM, _S_FAULTS = range(6)


def placement(total: int, weights: list[float]) -> list[int]:
    """``total`` agents over routers by ``weights`` (largest remainder); router i gets counts[i]."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


class _Node:
    """One simulated router: its ``Router``, its ``ClusterView`` and its state in the run."""

    __slots__ = ("armed", "busy_until", "forwarded", "index", "name", "partitioned", "router", "up", "view")

    def __init__(self, sim: ClusterSimulation, index: int, seed: int) -> None:
        self.index = index
        self.name = f"r{index}"
        self.up = True
        self.partitioned = False
        self.armed: float | None = None
        self.busy_until = 0.0
        self.router = Router(router_config(sim.scenario), sim.strategy, random.Random(seed))
        self.view: ClusterView[Action] = ClusterView(self.router, self.name, sim.cluster_config, lambda vid, r: None, self._lose)
        self.forwarded: dict[str, int] = {}  # task key -> the router it was forwarded from (its owner)

    def _lose(self, vid: str, now: float, reason: str) -> list[Action]:
        return self.router.agent_lost(vid, now, reason)


class _AgentLife:
    """Agents' processes and connections (``aicp.sim.faults.FaultTarget``), each at the router it is connected to.

    As ``aicp.sim.lifecycle.Lifecycle`` with one router: a crash closes the connection and
    that router hears of it one hop later (``agent_lost``), unless a partition cuts the agent
    off, when only its lease can tell; a recovered or healed agent registers again (at its
    router, or the next live one). Crashed and partitioned agents are kept in insertion-ordered
    dicts: a crash, a recovery or a heal is O(1).
    """

    def __init__(self, sim: ClusterSimulation) -> None:
        self.sim = sim
        self.crashed: dict[SimAgent, None] = {}
        self.partitioned_order: dict[SimAgent, None] = {}

    def is_partitioned(self, agent: SimAgent) -> bool:
        return agent.index in self.sim.link.partitioned

    def crash(self, agent: SimAgent) -> None:
        if not agent.up:
            return
        agent.up = False
        agent.reset()
        self.crashed[agent] = None
        if agent.connected:
            agent.connected = False
            self.sim.link.control(agent.index, self._closed, (agent, agent.epoch))

    def recover(self, agent: SimAgent) -> None:
        if agent.up:
            return
        agent.up = True
        agent.reset()
        self.crashed.pop(agent, None)
        self.sim.link.control(agent.index, self.sim._reconnect, agent)

    def partition(self, agent: SimAgent) -> None:
        self.sim.link.partitioned.add(agent.index)
        self.partitioned_order[agent] = None

    def heal(self, agent: SimAgent) -> None:
        self.sim.link.partitioned.discard(agent.index)
        self.partitioned_order.pop(agent, None)
        if agent.up and not agent.connected:
            self.sim.link.control(agent.index, self.sim._reconnect, agent)

    def _closed(self, message: tuple[SimAgent, int]) -> None:
        agent, epoch = message
        if agent.epoch != epoch:
            return  # it came back before the router saw it go
        sim = self.sim
        node = sim.nodes[sim.agent_router[agent.index]]
        if node.up:
            sim._apply(node, node.router.agent_lost(agent.agent_id, sim.env.now, "connection closed"))


class ClusterSimulation:
    """One replication of a cluster scenario. Same interface as ``engine.Simulation`` for the runner."""

    def __init__(self, scenario: Scenario, strategy: str, seed: np.random.SeedSequence, trace: bool = False) -> None:
        s = self.scenario = scenario
        if not s.routers:
            raise errors.LocalError("not a cluster scenario: it has no [[routers]]")
        spec: Routers = s.routers[0]
        self.spec = spec
        self.strategy = strategy
        self.env = env = simpy.Environment()
        self.cluster_config = ClusterConfig(publish_interval_s=spec.publish_interval_ms / 1000.0, peer_timeout_s=spec.peer_timeout_ms / 1000.0)
        base = router_seed(seed)
        self.nodes = [_Node(self, i, base + i) for i in range(spec.count)]
        self.by_name = {n.name: n for n in self.nodes}
        self.uniform = Blocks(np.random.default_rng(child_seed(seed, 10 + _S_UNIFORM)).random)
        lat = s.network.latency
        instant = isinstance(lat, ConstantDist | ExponentialDist | LognormalDist) and lat.mean_ms == 0.0
        self.link = Link(env, seconds(lat, np.random.default_rng(child_seed(seed, 10 + _S_NETWORK)), s), s.network.loss, self.uniform, instant)
        self.hop_s = spec.latency_ms / 1000.0
        self.task_cpu_s = spec.task_cpu_us / 2e6  # half on the submit, half on the result
        self.hop_cpu_s = spec.hop_cpu_us / 1e6
        self.methods: list[str] = [w.method for w in s.workload]
        self._method_ids = {m: i for i, m in reversed(list(enumerate(self.methods)))}
        self.agents: list[SimAgent] = []
        self.agent_router: list[int] = []
        weights = spec.placement or [1.0] * spec.count
        cost = (s.verify_cost_us + s.sign_cost_us) / 1e6
        for g, group in enumerate(s.agents):
            service = seconds(group.service_time, np.random.default_rng(child_seed(seed, 10 + _S_SERVICE, g)), s)
            prefix = group.name or f"g{g}"
            homes = [r for r, c in enumerate(placement(group.count, weights)) for _ in range(c)]
            for i in range(group.count):
                idx = len(self.agents)
                self.agents.append(SimAgent(env, idx, f"{prefix}-{i:04d}", g, list(group.capabilities), group.concurrency, service,
                                            group.speed, group.fail_prob, group.trust, cost, None, self.uniform, self.send_result))
                self.agent_router.append(homes[i])
        self.by_id = {a.agent_id: a for a in self.agents}
        self.life = _AgentLife(self)
        self.bad_signatures = 0
        expected = sum(expected_count(w.arrival, s.duration_s) for w in s.workload)
        self.records = Records(int(min(expected, s.max_tasks or expected) * 1.1) + 1024)
        self.owner = array("i")  # task -> owning router index
        self.timeouts = array("d")  # task -> its overall deadline in seconds (nan: the router's default)
        self.fixed_service: dict[int, float] = {}
        self.trace: array[int] | None = array("q") if trace else None
        self.submitted = 0
        self.ended = 0
        self.duplicate_outcomes = 0
        self.forwards = 0
        self.resubmitted = 0
        self.stopped = False
        self.arrivals_end_s = s.duration_s
        self._max_tasks = s.max_tasks if s.max_tasks is not None else 1 << 62
        self._streams_left = 0
        self._next_router = 0
        self._seed = seed
        self._drained = env.event()
        self.wall_s = 0.0
        self.on_second: Callable[[float], object] | None = None

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        s, env = self.scenario, self.env
        t0 = time.perf_counter()
        for a, home in zip(self.agents, self.agent_router):
            self.nodes[home].router.register_agent(a.agent_id, a.capabilities, 0.0, concurrency=a.concurrency, trust=a.trust)
        for node in self.nodes:
            node.view.next_publish = 0.0 if len(self.nodes) > 1 else None  # alone: nobody to tell
            self._arm(node)
        parent = child_seed(self._seed, 10 + _S_ARRIVAL)
        for w_i, w in enumerate(s.workload):
            timeout_s = w.timeout_ms / 1000.0 if w.timeout_ms is not None else None
            if isinstance(w.arrival, TraceArrival):
                rows = read_trace(w.arrival, s.resolve(w.arrival.file), s.duration_s)
                stream: Stream = TraceStream(env, self, iter(rows), w_i, timeout_s)
            else:
                stream = Stream(env, self, arrival_times(w.arrival, np.random.default_rng(child_seed(parent, w_i)), s.duration_s), w_i, timeout_s)
            self._streams_left += 1
            stream.start()
        for f in self.spec.faults:
            env.process(self._fault(f.at_s, f.action, f.router, f.until_s))
        env.process(self._heartbeats())
        fault_mod.start(env, list(s.faults), np.random.default_rng(child_seed(self._seed, 10 + _S_FAULTS)), self.agents, self.life)
        cfg = self.nodes[0].router.config
        guard = s.duration_s + cfg.max_deadline_s + cfg.attempt_timeout_s * cfg.max_attempts + 60.0
        env.run(until=env.any_of([self._drained, env.timeout(guard)]))
        self.wall_s = time.perf_counter() - t0
        return self.result()

    def result(self, error: str | None = None) -> RunResult:
        s = self.scenario
        rec = self.records.arrays()
        end = max(self.env.now, 1e-9)
        summary = summarize(rec, s.warmup_s, min(s.duration_s, self.arrivals_end_s))
        busy = np.array([a.busy_time for a in self.agents])
        conc = np.array([a.concurrency for a in self.agents], dtype=np.float64)
        util = busy / (conc * end)
        summary.update(
            strategy=self.strategy,
            routers=self.spec.count,
            submitted=self.submitted,
            ended=self.ended,
            lost_total=self.submitted - self.ended,
            duplicate_outcomes=self.duplicate_outcomes,
            cross_router_share=self.forwards / self.submitted if self.submitted else 0.0,
            forwards=self.forwards,
            resubmitted=self.resubmitted,
            bad_signatures=self.bad_signatures,
            per_router={n.name: {"up": n.up, "summaries_sent": n.view.counters["summaries_sent"], "routers_lost": n.view.counters["routers_lost"],
                                 "completed": n.router.stats.completed} for n in self.nodes},
            sim_end_s=self.env.now,
            wall_s=self.wall_s,
            tasks_per_wall_s=self.submitted / self.wall_s if self.wall_s > 0 else None,
            utilisation={"mean": float(util.mean()), "max": float(util.max())},
            error=error,
        )
        agents = {"busy_time_s": busy, "utilisation": util, "served": np.array([a.served for a in self.agents]),
                  "trust": np.full(len(self.agents), np.nan), "group": np.array([a.group for a in self.agents])}
        tl = timelines(rec, {}, s.window_s, end)
        trace = np.frombuffer(self.trace, dtype=np.int64).reshape(-1, 3).copy() if self.trace is not None else None
        return RunResult(summary, rec, tl, agents, trace, list(self.methods))

    def method_index(self, method: str) -> int:
        idx = self._method_ids.get(method)
        if idx is None:
            idx = self._method_ids[method] = len(self.methods)
            self.methods.append(method)
        return idx

    # ------------------------------------------------------------------ arrivals
    def submit(self, method: int, timeout_s: float | None, service_s: float | None, lag_s: float = 0.0) -> None:
        """One arrival at the next live router in turn. ``lag_s`` is always 0: a cluster takes no calibration."""
        now = self.env.now
        i = self.records.add(now, method)
        self.submitted = self.records.n
        if service_s is not None:
            self.fixed_service[i] = service_s
        node = self._live_from(self._next_router)
        self._next_router = (self._next_router + 1) % len(self.nodes)
        self.owner.append(node.index if node is not None else -1)
        self.timeouts.append(float("nan") if timeout_s is None else timeout_s)
        if node is None:
            self._record_end(i, errors.NO_AGENT)
        else:
            self._cpu(node, self.task_cpu_s, self._submit_at, (node, i, timeout_s))
        if self.submitted >= self._max_tasks and not self.stopped:
            self.stopped = True
            self.arrivals_end_s = now
        self._check_drained()

    def _submit_at(self, args: tuple[_Node, int, float | None]) -> None:
        node, i, timeout_s = args
        if not node.up or self.owner[i] != node.index:
            return
        key = str(i)
        if key in node.router:  # it came here forwarded before, from an owner that has died: adopt it
            node.forwarded.pop(key, None)
            return
        self._apply(node, node.router.submit(key, self.methods[self.records.method[i]], self.env.now, timeout_s))

    def stream_done(self) -> None:
        self._streams_left -= 1
        if self._streams_left <= 0:
            self.stopped = True
            self._check_drained()

    # ------------------------------------------------------------------ the routers' actions
    def _apply(self, node: _Node, actions: list[Action]) -> None:
        now = self.env.now
        rec = self.records
        for action in actions:
            if isinstance(action, Dispatch):
                i = int(action.task_id)
                if node.index == self.owner[i]:
                    rec.attempts[i] += 1
                if action.agent_id[0] == REMOTE_MARK:
                    target = self.by_name[action.agent_id[1:].split(REMOTE_MARK, 1)[0]]
                    self.forwards += 1
                    limit = node.router.attempt_deadline(action.task_id, now)
                    self._between(node, target, self._forwarded, (node, target, i, (limit or now) - now))
                else:
                    agent = self.by_id[action.agent_id]
                    if np.isnan(rec.dispatch[i]):
                        rec.dispatch[i] = now
                    rec.agent[i] = agent.index
                    if self.trace is not None:
                        self.trace.extend((i, agent.index, int(rec.attempts[i])))
                    self.link.send(agent.index, agent.receive, (str(i), self.fixed_service.get(i)))
            elif isinstance(action, (Completed, Failed)):
                i = int(action.task_id)
                origin = node.forwarded.pop(action.task_id, None)
                ok = isinstance(action, Completed)
                if origin is not None:  # ran here for another router: the outcome goes back to it
                    reason = "" if ok else f"{action.code}: {action.message}"  # type: ignore[union-attr]
                    back = self.nodes[origin]
                    self._between(node, back, self._outcome, (back, node, i, ok, reason))
                elif self.owner[i] == node.index:
                    self._record_end(i, "completed" if ok else action.code)  # type: ignore[union-attr]
            elif isinstance(action, AgentDown):
                down = self.by_id.get(action.agent_id)
                if down is not None:  # the router closed its connection (lease expired): it drops its work, registers again
                    down.connected = False
                    down.reset()
                    self._later(self.scenario.network.reconnect_s, self._reconnect, down)
        self._arm(node)

    def _forwarded(self, args: tuple[_Node, _Node, int, float]) -> None:
        origin, node, i, timeout_s = args
        key = str(i)
        if key in node.router:
            if key in node.forwarded:
                node.forwarded[key] = origin.index  # the same task from a newer owner: it gets the outcome
            return
        node.forwarded[key] = origin.index
        timeout = max(0.001, timeout_s) + self.cluster_config.forward_grace_s
        self._apply(node, node.router.submit(key, self.methods[self.records.method[i]], self.env.now, timeout,
                                             local_only=True, max_attempts=1))

    def _outcome(self, args: tuple[_Node, _Node, int, bool, str]) -> None:
        owner, remote, i, ok, reason = args
        _, actions = owner.router.result(candidate_id(remote.name, self.methods[self.records.method[i]]), str(i), ok, self.env.now, reason)
        self._apply(owner, actions)

    def send_result(self, agent: SimAgent, task: str, ok: bool) -> None:
        self.link.send(agent.index, self._on_result, (agent, task, ok, agent.misbehave))

    def _on_result(self, message: tuple[SimAgent, str, bool, bool]) -> None:
        agent = message[0]
        node = self.nodes[self.agent_router[agent.index]]
        if node.up:
            self._cpu(node, self.task_cpu_s, self._result_at, (node, message))

    def _result_at(self, args: tuple[_Node, tuple[SimAgent, str, bool, bool]]) -> None:
        node, (agent, task, ok, bad) = args
        if node.up and self.agent_router[agent.index] == node.index:
            if bad:  # a misbehaving agent's signature does not verify: a failed attempt, and its trust drops
                self.bad_signatures += 1
                node.router.penalise_bad_signature(agent.agent_id)
                _, actions = node.router.result(agent.agent_id, task, False, self.env.now, errors.INVALID_SIGNATURE)
            else:
                _, actions = node.router.result(agent.agent_id, task, ok, self.env.now, "" if ok else "agent failed")
            self._apply(node, actions)

    def _record_end(self, i: int, code: str) -> None:
        rec = self.records
        if rec.outcome[i] != 0:
            self.duplicate_outcomes += 1
            return
        rec.end[i] = self.env.now
        rec.outcome[i] = COMPLETED if code == "completed" else OUTCOME_CODES.get(code, OTHER_FAILURE)
        self.ended += 1
        self._check_drained()

    def _check_drained(self) -> None:
        if self.stopped and self.ended >= self.submitted and not self._drained.triggered:
            self._drained.succeed()

    # ------------------------------------------------------------------ time, links and CPU
    def _later(self, delay: float, fn: Callable[[Any], object], arg: Any) -> None:
        if delay <= 0.0:
            fn(arg)
        else:
            Timeout(self.env, delay, (fn, arg)).callbacks.append(_call)  # type: ignore[union-attr]

    def _cpu(self, node: _Node, cost: float, fn: Callable[[Any], object], arg: Any) -> None:
        """Run ``fn(arg)`` on ``node`` after ``cost`` seconds of its CPU (FIFO); at once when routers are free."""
        if cost <= 0.0:
            fn(arg)
            return
        now = self.env.now
        start = node.busy_until if node.busy_until > now else now
        node.busy_until = start + cost
        self._later(node.busy_until - now, fn, arg)

    def _between(self, src: _Node, dst: _Node, fn: Callable[[Any], object], arg: Any) -> None:
        """A message between two routers: dropped if either is down or partitioned, else ``latency_ms`` later."""
        if not (src.up and dst.up) or src.partitioned or dst.partitioned:
            return
        self._later(self.hop_s, self._arrive, (dst, fn, arg))

    def _arrive(self, args: tuple[_Node, Callable[[Any], object], Any]) -> None:
        dst, fn, arg = args
        if dst.up and not dst.partitioned:
            self._cpu(dst, self.hop_cpu_s, fn, arg)

    def _arm(self, node: _Node) -> None:
        """Make sure ``_tick`` runs at the node's next deadline (router timers, publish, peer expiry)."""
        if not node.up:
            return
        times = [t for t in (node.router.next_deadline(), node.view.next_deadline()) if t is not None]
        if not times:
            return
        when = min(times)
        if node.armed is not None and node.armed <= when:
            return
        node.armed = when
        self._later(max(0.0, when - self.env.now), self._tick, (node, when))

    def _tick(self, args: tuple[_Node, float]) -> None:
        node, when = args
        if node.armed != when or not node.up:
            return  # superseded by an earlier wake-up, or the router is gone
        node.armed = None
        now = self.env.now
        actions = node.router.on_timer(now)
        summary = node.view.publish_due(now)
        if summary is not None:
            for other in self.nodes:
                if other is not node:
                    self._between(node, other, self._summary, (other, summary))
        actions.extend(node.view.expire(now))
        self._apply(node, actions)
        if self.on_second is not None and int(now) != int(now - 1e-9):
            self.on_second(now)

    def _summary(self, args: tuple[_Node, Summary]) -> None:
        node, summary = args
        self._apply(node, node.view.apply(summary, self.env.now))

    def _heartbeats(self) -> Any:
        hb = self.nodes[0].router.config.heartbeat_s
        part = self.link.partitioned
        while not self._drained.triggered:
            yield self.env.timeout(hb)
            now = self.env.now
            for a in self.agents:
                node = self.nodes[self.agent_router[a.index]]
                if node.up and a.up and a.connected and not a.hb_lost and a.index not in part:
                    node.router.heartbeat(a.agent_id, now)

    # ------------------------------------------------------------------ faults
    def _live_from(self, start: int) -> _Node | None:
        n = len(self.nodes)
        for k in range(n):
            node = self.nodes[(start + k) % n]
            if node.up:
                return node
        return None

    def _fault(self, at_s: float, action: str, index: int, until_s: float | None) -> Any:
        yield self.env.timeout(at_s)
        node = self.nodes[index]
        if action == "partition":
            node.partitioned = True
            self._apply(node, node.view.isolated(self.env.now))
            if until_s is not None:
                yield self.env.timeout(until_s - at_s)
                node.partitioned = False
            return
        self._crash(node)
        if until_s is not None:
            yield self.env.timeout(until_s - at_s)
            node.up = True
            node.armed = None
            node.busy_until = self.env.now
            node.view.next_publish = self.env.now if len(self.nodes) > 1 else None
            self._arm(node)

    def _crash(self, node: _Node) -> None:
        """Everything in the router is lost; its agents and controllers move to the next live router."""
        node.up = False
        node.forwarded.clear()
        fresh = _Node(self, node.index, router_seed(self._seed) + 1000 + node.index)
        node.router, node.view = fresh.router, fresh.view
        reconnect = self.scenario.network.reconnect_s
        for a in self.agents:
            if self.agent_router[a.index] == node.index:
                a.connected = False
                a.reset()
                self._later(reconnect, self._reconnect, a)
        pending = [i for i in range(self.records.n) if self.owner[i] == node.index and self.records.outcome[i] == 0]
        for i in pending:
            self._later(reconnect, self._resubmit, i)

    def _reconnect(self, agent: SimAgent) -> None:
        """The agent registers again: at its router if it is up, else at the next live one. A crashed or cut-off agent
        does not (its recovery or heal brings it back)."""
        if not agent.up or agent.connected or agent.index in self.link.partitioned:
            return
        home = self.nodes[self.agent_router[agent.index]]
        node = home if home.up else self._live_from(home.index + 1)
        if node is None:
            self._later(self.scenario.network.reconnect_s, self._reconnect, agent)
            return
        self.agent_router[agent.index] = node.index
        agent.reset()
        agent.connected = True
        self._apply(node, node.router.register_agent(agent.agent_id, agent.capabilities, self.env.now, concurrency=agent.concurrency, trust=agent.trust))

    def _resubmit(self, i: int) -> None:
        """The controller of task ``i`` moved to a live router and re-sends it under the same id, with the time it has left."""
        if self.records.outcome[i] != 0:
            return
        node = self._live_from(self.owner[i] + 1)
        if node is None:
            self._record_end(i, errors.SHUTTING_DOWN)
            return
        self.resubmitted += 1
        self.owner[i] = node.index
        total = self.timeouts[i] if self.timeouts[i] == self.timeouts[i] else self.scenario.router.deadline_ms / 1000.0
        left = self.records.arrival[i] + total - self.env.now
        if left <= 0.0:
            self._record_end(i, errors.TIMEOUT)
            return
        self._cpu(node, self.task_cpu_s, self._submit_at, (node, i, left))


def _call(event: simpy.Event) -> None:
    fn, arg = event._value
    fn(arg)
