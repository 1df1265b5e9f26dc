"""What ``aicp bench --scenario FILE`` runs: a scenario turned into processes, flags and a schedule.

:func:`build_plan` is pure (no process is started), so a test can check exactly what
a file becomes. A scenario runs live faithfully or not at all: a field the live side
cannot reproduce is refused with :class:`Unsupported`, which names the field and its
value. What each section becomes:

* ``[[agents]]``: every group, every agent, with the simulator's ids
  (``<name or g<i>>-0000``), capabilities, concurrency, service distribution (all its
  parameters: lognormal ``sigma``, empirical ``file`` and ``scale``), ``speed`` and
  ``fail_prob`` (``aicp.lab.bench.scenario_agents``). Agents of a group share up to
  ``agent_procs`` processes; an agent that a fault kills gets a process of its own.
  ``trust``: the live router has one prior for all agents, so groups may set it only
  if they agree (it becomes ``--trust-prior``).
* ``[[workload]]``: every workload, with its method, deadline (``timeout_ms``, else
  the router's ``deadline_ms``) and arrival process (poisson, constant, bursty, ramp:
  drawn by the simulator's own generators, seeded by the scenario's seed; trace: the
  file's times and methods). All workloads merge into one schedule the load
  generators replay open loop. ``max_tasks`` keeps the first that many arrivals.
* ``[router]``: every field, as ``aicp serve`` flags.
* ``[network] latency``: a delay of one hop each way at the agents (task in, result
  out), like the simulator's router-agent link; the load generator's hops are not
  delayed (nor are they in the simulator). ``loss`` > 0 is refused.
* ``[[faults]]``: ``crash`` (SIGKILL of the agent's process at ``at_s``, restart at
  ``until_s``), ``recover`` (restart the oldest killed), ``flap`` (kill and restart
  every half period). ``agents = N`` picks N agents up at that time, with the
  scenario's seed (not necessarily the ones the simulator picks). ``slow``,
  ``partition``, ``heal``, ``heartbeat_loss`` and ``misbehave`` are refused.
* ``strategies``: ``--strategy`` when given, else every strategy the file lists, one
  router each, on the same schedule.
* Model knobs of the simulator (``heartbeats``, ``signing``, ``sign_cost_us``,
  ``verify_cost_us``, ``window_s``) describe costs the live stack has for real; they
  are listed as not applicable. ``replications``: one live run per strategy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from aicp.lab.bench.schedule import DEFAULT_PAYLOAD_BYTES, Schedule
from aicp.sim import workload as workload_mod
from aicp.sim.scenario import (
    AgentGroup,
    CrashFault,
    EmpiricalDist,
    FlapFault,
    Network,
    RecoverFault,
    RouterSection,
    Scenario,
    ScenarioError,
    TraceArrival,
)

#: simulator-only model parameters: the live stack pays these costs for real
MODEL_KNOBS = ("heartbeats", "signing", "sign_cost_us", "verify_cost_us", "window_s")


class Unsupported(ScenarioError):
    """A scenario field the live side cannot reproduce; the message names the field and its value."""

    def __init__(self, source: str, where: str, value: Any, why: str) -> None:
        super().__init__(f"{source}: {where} = {value!r}: {why}; aicp bench --scenario refuses rather than run a different workload")
        self.where = where
        self.value = value


@dataclass
class AgentSpec:
    id: str
    group: str
    capabilities: list[str]
    concurrency: int
    service_time: dict[str, Any]
    speed: float
    fail_prob: float
    seed: int


@dataclass
class AgentProc:
    """One agent process: the agents it runs (one when a fault kills it)."""

    name: str
    agents: list[AgentSpec]

    def spec(self, url: str, latency: dict[str, Any] | None) -> dict[str, Any]:
        """The JSON spec ``aicp.lab.bench.scenario_agents --spec`` reads."""
        return {"url": url, "latency": latency, "agents": [msgspec.to_builtins(a) for a in self.agents]}


@dataclass(order=True)
class FaultStep:
    """At ``t_s`` from the schedule's time 0: ``kill`` (SIGKILL) or ``start`` process ``proc``."""

    t_s: float
    action: str
    proc: str
    source: str = field(compare=False, default="")


@dataclass
class Plan:
    name: str
    duration_s: float
    warmup_s: float
    strategies: list[str]
    router_flags: list[str]
    procs: list[AgentProc]
    latency: dict[str, Any] | None
    schedule: Schedule
    steps: list[FaultStep]
    default_deadline_s: float
    not_applicable: list[str]

    @property
    def agents(self) -> int:
        return sum(len(p.agents) for p in self.procs)


def router_flags(r: RouterSection, trust_prior: float) -> list[str]:
    """Every ``[router]`` field as an ``aicp serve`` flag."""
    return [
        "--attempt-timeout", repr(r.timeout_ms / 1000.0),
        "--default-deadline", repr(r.deadline_ms / 1000.0),
        "--max-attempts", str(r.max_attempts),
        "--heartbeat", repr(r.heartbeat_s),
        "--lease", repr(r.lease_s),
        "--retry-backoff-base", repr(r.backoff_base_ms / 1000.0),
        "--retry-backoff-cap", repr(r.backoff_cap_ms / 1000.0),
        "--retry-budget", repr(r.retry_budget_ratio),
        "--trust-prior", repr(trust_prior),
        "--max-tasks", str(r.max_tasks),
    ]  # fmt: skip


def _dist_data(dist: Any, sc: Scenario) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(dist)
    if isinstance(dist, EmpiricalDist):
        data["file"] = str(sc.resolve(dist.file).resolve())
    return data


def _trust(sc: Scenario, source: str) -> float:
    set_values = {(i, g.trust) for i, g in enumerate(sc.agents) if g.trust is not None}
    distinct = {t for _, t in set_values}
    if len(distinct) > 1 or (distinct and len(set_values) < len(sc.agents) and sc.router.trust_prior not in distinct):
        i, t = sorted(set_values)[-1]
        raise Unsupported(source, f"agents[{i}].trust", t, "the live router has one trust prior for every agent, and the groups differ")
    return distinct.pop() if distinct else sc.router.trust_prior


def _check_network(net: Network, source: str) -> dict[str, Any] | None:
    if net.loss > 0.0:
        raise Unsupported(source, "network.loss", net.loss, "the live side does not drop messages")
    if net.reconnect_s != Network().reconnect_s:
        raise Unsupported(source, "network.reconnect_s", net.reconnect_s, "live agents reconnect with their own backoff")
    lat: dict[str, Any] = msgspec.to_builtins(net.latency)
    zero = lat.get("dist") in ("constant", "exponential", "lognormal") and lat.get("mean_ms") == 0.0
    return None if zero else lat


def _schedule(sc: Scenario, source: str) -> Schedule:
    rows: list[tuple[float, str, float | None, int]] = []
    for i, w in enumerate(sc.workload):
        deadline = w.timeout_ms if w.timeout_ms is not None else sc.router.deadline_ms
        if isinstance(w.arrival, TraceArrival):
            for t, method, service_s in workload_mod.read_trace(w.arrival, sc.resolve(w.arrival.file), sc.duration_s):
                if service_s is not None:
                    raise Unsupported(source, f"workload[{i}].arrival.file", w.arrival.file,
                                      "its service_ms column fixes each task's service time; live agents draw their own")
                rows.append((t, method or w.method, deadline, DEFAULT_PAYLOAD_BYTES))
        else:
            rng = np.random.default_rng([sc.seed, 7, i])
            rows.extend((t, w.method, deadline, DEFAULT_PAYLOAD_BYTES) for t in workload_mod.arrival_times(w.arrival, rng, sc.duration_s))
    rows.sort(key=lambda r: r[0])
    if sc.max_tasks is not None:
        rows = rows[: sc.max_tasks]
    return Schedule.build(rows)


def _fault_timeline(sc: Scenario, source: str) -> list[tuple[float, str, list[str], str]]:
    """``(t, "kill"|"start", agent ids, source)`` in time order, resolving ``agents = N`` and ``recover`` as they happen."""
    for i, f in enumerate(sc.faults):
        if not isinstance(f, CrashFault | RecoverFault | FlapFault):
            action = type(f).__struct_config__.tag
            raise Unsupported(source, f"faults[{i}].action", action, "the live side runs crash, recover and flap faults only")
    rng = np.random.default_rng([sc.seed, 11])
    ids = sc.agent_ids()
    queue: list[tuple[float, int, int, str, Any]] = []  # (t, seq, fault index, what, agents)
    seq = 0
    for i, f in enumerate(sc.faults):
        queue.append((f.at_s, seq, i, "fault", None))
        seq += 1
    heapq.heapify(queue)
    down: list[str] = []  # oldest first
    out: list[tuple[float, str, list[str], str]] = []
    while queue:
        t, _, i, what, chosen = heapq.heappop(queue)
        if t >= sc.duration_s:
            continue
        f = sc.faults[i]
        where = f"faults[{i}]"
        if what == "start":
            back = [a for a in chosen if a in down]
            for a in back:
                down.remove(a)
            if back:
                out.append((t, "start", back, where))
            continue
        if what == "kill":
            gone = [a for a in chosen if a not in down]
            down.extend(gone)
            if gone:
                out.append((t, "kill", gone, where))
            continue
        if isinstance(f, RecoverFault):
            n = len(f.agents) if isinstance(f.agents, list) else f.agents
            pick = [a for a in down if a in f.agents] if isinstance(f.agents, list) else down[:n]
            heapq.heappush(queue, (t, seq, i, "start", list(pick)))
            seq += 1
            continue
        up = [a for a in ids if a not in down]
        if isinstance(f.agents, list):
            pick = list(f.agents)
        else:
            n = min(f.agents, len(up))
            pick = [up[int(k)] for k in np.sort(rng.choice(len(up), size=n, replace=False))] if n else []
        until = getattr(f, "until_s", None)
        if isinstance(f, CrashFault):
            heapq.heappush(queue, (t, seq, i, "kill", pick))
            seq += 1
            if until is not None:
                heapq.heappush(queue, (until, seq, i, "start", pick))
                seq += 1
        else:
            assert isinstance(f, FlapFault)
            end = min(until if until is not None else sc.duration_s, sc.duration_s)
            half = f.period_s / 2.0
            k = 0
            while t + k * half < end:
                heapq.heappush(queue, (t + k * half, seq, i, "kill" if k % 2 == 0 else "start", pick))
                seq += 1
                k += 1
            if k % 2 == 1:
                heapq.heappush(queue, (end, seq, i, "start", pick))
                seq += 1
    return out


def build_plan(sc: Scenario, source: str = "<scenario>", strategy: str | None = None, agent_procs: int = 2) -> Plan:
    """The processes, flags, schedule and fault steps of ``sc``; raises :class:`Unsupported` for what live cannot do."""
    latency = _check_network(sc.network, source)
    trust = _trust(sc, source)
    timeline = _fault_timeline(sc, source)
    faulted = {a for _, _, agents, _ in timeline for a in agents}
    procs: list[AgentProc] = []
    ids = iter(sc.agent_ids())
    for g_i, group in enumerate(sc.agents):
        name = group.name or f"g{g_i}"
        specs = [_agent_spec(next(ids), name, group, sc, seed=sc.seed * 100_003 + g_i * 10_007 + k) for k in range(group.count)]
        shared = [a for a in specs if a.id not in faulted]
        chunks = max(1, min(agent_procs, len(shared)))
        for c in range(chunks):
            part = shared[c::chunks]
            if part:
                procs.append(AgentProc(f"{name}-p{c}", part))
        procs.extend(AgentProc(a.id, [a]) for a in specs if a.id in faulted)
    steps = sorted(FaultStep(t, action, a, where) for t, action, agents, where in timeline for a in agents)
    return Plan(
        name=sc.name,
        duration_s=sc.duration_s,
        warmup_s=sc.warmup_s,
        strategies=[strategy] if strategy else list(sc.strategies),
        router_flags=router_flags(sc.router, trust),
        procs=procs,
        latency=latency,
        schedule=_schedule(sc, source),
        steps=steps,
        default_deadline_s=sc.router.deadline_ms / 1000.0,
        not_applicable=[*MODEL_KNOBS, "replications"],
    )


def _agent_spec(agent_id: str, group_name: str, g: AgentGroup, sc: Scenario, seed: int) -> AgentSpec:
    return AgentSpec(id=agent_id, group=group_name, capabilities=list(g.capabilities), concurrency=g.concurrency,
                     service_time=_dist_data(g.service_time, sc), speed=g.speed, fail_prob=g.fail_prob, seed=seed)
