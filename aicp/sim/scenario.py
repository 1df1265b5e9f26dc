"""Scenario files: TOML decoded into Structs that reject unknown fields.

A typo is an error that names the field and the file (``ScenarioError``), never a
silent default. Distributions, arrival processes and faults are tagged unions
(``dist``, ``process``, ``action``), so each kind accepts exactly its own keys.
``--set a.0.b=value`` overrides (sweeps) are applied to the plain data and the
result is validated again, so an override cannot smuggle in a typo either.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from aicp import errors, strategies

NonNeg = Annotated[float, Meta(ge=0.0)]
Pos = Annotated[float, Meta(gt=0.0)]
Prob = Annotated[float, Meta(ge=0.0, le=1.0)]
Count = Annotated[int, Meta(ge=1)]


class ScenarioError(errors.LocalError):
    """A scenario file is missing, malformed, or names something unknown."""


class _Strict(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# ----------------------------------------------------------------------------- distributions (ms)
class _Dist(_Strict, tag_field="dist"):
    pass


class ConstantDist(_Dist, tag="constant"):
    mean_ms: NonNeg


class ExponentialDist(_Dist, tag="exponential"):
    mean_ms: NonNeg


class LognormalDist(_Dist, tag="lognormal"):
    mean_ms: NonNeg
    sigma: NonNeg = 0.5


class EmpiricalDist(_Dist, tag="empirical"):
    """Samples in milliseconds, one number per line (CSV: first column), path relative to the scenario."""

    file: str
    scale: Pos = 1.0


Dist = ConstantDist | ExponentialDist | LognormalDist | EmpiricalDist


# ----------------------------------------------------------------------------- arrivals
class _Arrival(_Strict, tag_field="process"):
    pass


class PoissonArrival(_Arrival, tag="poisson"):
    rate_per_s: Pos


class ConstantArrival(_Arrival, tag="constant"):
    rate_per_s: Pos


class BurstyArrival(_Arrival, tag="bursty"):
    """Poisson at ``rate_per_s`` for ``on_s``, then at ``off_rate_per_s`` for ``off_s``, repeating."""

    rate_per_s: Pos
    on_s: Pos
    off_s: Pos
    off_rate_per_s: NonNeg = 0.0


class RampArrival(_Arrival, tag="ramp"):
    """Poisson whose rate moves linearly from ``rate_per_s`` to ``to_rate_per_s`` over ``ramp_s`` (default: the run)."""

    rate_per_s: NonNeg
    to_rate_per_s: NonNeg
    ramp_s: Pos | None = None


class TraceArrival(_Arrival, tag="trace"):
    """Replay a CSV (header ``t_s,method,service_ms``) or JSONL file; ``method``/``service_ms`` are optional."""

    file: str
    time_scale: Pos = 1.0


Arrival = PoissonArrival | ConstantArrival | BurstyArrival | RampArrival | TraceArrival


# ----------------------------------------------------------------------------- faults
AgentSelector = Annotated[int, Meta(ge=1)] | list[str]


class _Fault(_Strict, tag_field="action"):
    at_s: NonNeg
    agents: AgentSelector = 1


class CrashFault(_Fault, tag="crash"):
    until_s: NonNeg | None = None  # recover at this time (optional)
    over_s: NonNeg = 0.0  # spread the crashes evenly over [at_s, at_s + over_s) (a storm, not one instant)


class RecoverFault(_Fault, tag="recover"):
    pass


class SlowFault(_Fault, tag="slow"):
    factor: Pos = 5.0
    until_s: NonNeg | None = None


class FlapFault(_Fault, tag="flap"):
    period_s: Pos = 10.0  # down for half a period, up for half
    until_s: NonNeg | None = None


class PartitionFault(_Fault, tag="partition"):
    until_s: NonNeg | None = None


class HealFault(_Fault, tag="heal"):
    pass


class HeartbeatLossFault(_Fault, tag="heartbeat_loss"):
    until_s: NonNeg | None = None


class MisbehaveFault(_Fault, tag="misbehave"):
    until_s: NonNeg | None = None


Fault = CrashFault | RecoverFault | SlowFault | FlapFault | PartitionFault | HealFault | HeartbeatLossFault | MisbehaveFault


# ----------------------------------------------------------------------------- sections
class Network(_Strict):
    latency: Dist = msgspec.field(default_factory=lambda: ConstantDist(mean_ms=0.0))  # one way, per hop
    loss: Prob = 0.0  # per message (tasks, results, heartbeats); connection events are not lost
    reconnect_s: NonNeg = 1.0  # how long an agent the router dropped waits before registering again


class AgentGroup(_Strict):
    count: Count
    capabilities: Annotated[list[str], Meta(min_length=1)]
    service_time: Dist
    concurrency: Count = 1
    trust: Prob | None = None  # prior; None = the router's trust_prior
    speed: Pos = 1.0  # service time is divided by this
    fail_prob: Prob = 0.0
    name: str = ""  # id prefix; default "g<group>"


class Workload(_Strict):
    method: str
    arrival: Arrival
    timeout_ms: Pos | None = None  # the task's overall deadline; None = router deadline_ms


class CalibrationSection(_Strict):
    """The live stack's measured costs (``aicp calibrate``; aicp/sim/stack.py); path relative to the scenario."""

    file: str


class RouterSection(_Strict):
    timeout_ms: Pos = 5000.0  # one attempt's limit
    deadline_ms: Pos = 30000.0  # a task's overall limit when its workload names none
    max_attempts: Count = 3
    heartbeat_s: Pos = 30.0
    lease_s: Pos = 90.0
    backoff_base_ms: NonNeg = 5.0
    backoff_cap_ms: NonNeg = 1000.0
    retry_budget_ratio: NonNeg = 0.2
    trust_prior: Prob = 0.5
    max_tasks: Count = 100_000


class RouterFault(_Strict):
    """A fault on one router of a cluster: ``crash`` (its agents and controllers move to the next router)
    or ``partition`` (cut off from the other routers, not from its own peers)."""

    at_s: NonNeg
    action: Literal["crash", "partition"]
    router: Annotated[int, Meta(ge=0)]
    until_s: NonNeg | None = None  # recover / heal at this time


class Routers(_Strict):
    """Several routers as one (docs/CLUSTER.md), run by ``aicp.sim.cluster`` with the cluster core."""

    count: Annotated[int, Meta(ge=1, le=1000)]
    latency_ms: NonNeg = 0.5  # one way, between two routers
    publish_interval_ms: Pos = 50.0
    peer_timeout_ms: Pos = 500.0
    placement: list[NonNeg] = []  # weight of each router when agents are placed (each group spread alike); default even
    task_cpu_us: NonNeg = 0.0  # router CPU per task (its submit and its result); 0 = routers are infinitely fast
    hop_cpu_us: NonNeg = 0.0  # router CPU per message between routers (each end)
    faults: list[RouterFault] = []


class Scenario(_Strict):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+\Z")]
    duration_s: Pos
    agents: Annotated[list[AgentGroup], Meta(min_length=1)]
    workload: Annotated[list[Workload], Meta(min_length=1)]
    seed: Annotated[int, Meta(ge=0)] = 0
    warmup_s: NonNeg = 0.0
    replications: Count = 5
    strategies: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: list(strategies.names()))
    max_tasks: Count | None = None  # stop arrivals after this many tasks (whatever duration_s says)
    heartbeats: Literal["full", "aggregate"] = "aggregate"
    signing: Literal["modeled", "real"] = "modeled"
    sign_cost_us: NonNeg = 25.0  # CPU time per Ed25519 sign (agent side)
    verify_cost_us: NonNeg = 60.0  # CPU time per verify (agent for the task, router for the result)
    window_s: Pos = 5.0  # sliding window of the p50/p99 timelines
    network: Network = msgspec.field(default_factory=Network)
    router: RouterSection = msgspec.field(default_factory=RouterSection)
    faults: list[Fault] = msgspec.field(default_factory=list)
    routers: Annotated[list[Routers], Meta(max_length=1)] = []  # [[routers]] count = N: a cluster (aicp.sim.cluster)
    calibration: CalibrationSection | None = None  # None: an ideal stack (no live costs modeled)
    base_dir: str = "."  # where relative file names resolve; set from the file's folder

    def agent_ids(self) -> list[str]:
        ids: list[str] = []
        for g, group in enumerate(self.agents):
            prefix = group.name or f"g{g}"
            ids.extend(f"{prefix}-{i:04d}" for i in range(group.count))
        return ids

    def resolve(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else Path(self.base_dir) / p


# ----------------------------------------------------------------------------- loading
def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read, decode and check a scenario file. Every problem is a ``ScenarioError`` naming ``path``."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{p}: no such scenario file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    raw.setdefault("base_dir", str(p.parent.resolve()))
    return from_data(raw, str(p), overrides)


def from_data(data: dict[str, Any], source: str = "<data>", overrides: dict[str, Any] | None = None) -> Scenario:
    data = msgspec.to_builtins(data)
    for key, value in (overrides or {}).items():
        set_path(data, key, value, source)
    try:
        scenario = msgspec.convert(data, Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    check(scenario, source)
    return scenario


def with_overrides(scenario: Scenario, overrides: dict[str, Any], source: str = "<overrides>") -> Scenario:
    return from_data(msgspec.to_builtins(scenario), source, overrides)


def to_data(scenario: Scenario) -> dict[str, Any]:
    """The fully resolved scenario (every default filled in), JSON-ready."""
    data: dict[str, Any] = msgspec.to_builtins(scenario)
    return data


def set_path(data: Any, dotted: str, value: Any, source: str = "<overrides>") -> None:
    """``workload.0.arrival.rate_per_s`` -> data["workload"][0]["arrival"]["rate_per_s"] = value."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            try:
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            except (ValueError, IndexError):
                raise ScenarioError(f"{source}: --set {dotted}: no list item {where}") from None
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node:
                raise ScenarioError(f"{source}: --set {dotted}: no field {where}")
            else:
                node = node[part]
        else:
            raise ScenarioError(f"{source}: --set {dotted}: {where} is not a table or list")


def parse_value(text: str) -> Any:
    """A --set value: int, float, bool, or else the string itself."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def check(s: Scenario, source: str) -> None:
    """Cross-field checks msgspec cannot express."""
    known = set(strategies.names())
    for name in s.strategies:
        if name not in known:
            raise ScenarioError(f"{source}: strategies: unknown strategy {name!r}; known: {', '.join(sorted(known))}")
    if s.warmup_s >= s.duration_s:
        raise ScenarioError(f"{source}: warmup_s ({s.warmup_s}) must be less than duration_s ({s.duration_s})")
    caps = {c for g in s.agents for c in g.capabilities}
    for i, w in enumerate(s.workload):
        if w.method not in caps:
            raise ScenarioError(f"{source}: workload[{i}].method: no agent group has capability {w.method!r}")
        for name in _files_of(w.arrival):
            if not s.resolve(name).is_file():
                raise ScenarioError(f"{source}: workload[{i}].arrival.file: {s.resolve(name)} does not exist")
    for i, g in enumerate(s.agents):
        for name in _files_of(g.service_time):
            if not s.resolve(name).is_file():
                raise ScenarioError(f"{source}: agents[{i}].service_time.file: {s.resolve(name)} does not exist")
    if s.calibration is not None and not s.resolve(s.calibration.file).is_file():
        raise ScenarioError(f"{source}: calibration.file: {s.resolve(s.calibration.file)} does not exist")
    ids = set(s.agent_ids())
    if len(ids) != sum(g.count for g in s.agents):
        raise ScenarioError(f"{source}: agents: two groups produce the same agent ids; give them distinct names")
    for i, f in enumerate(s.faults):
        if isinstance(f.agents, list):
            unknown = [a for a in f.agents if a not in ids]
            if unknown:
                raise ScenarioError(f"{source}: faults[{i}].agents: unknown agent ids {unknown[:5]}")
        elif f.agents > len(ids):
            raise ScenarioError(f"{source}: faults[{i}].agents: {f.agents} agents asked, the scenario has {len(ids)}")
        until = getattr(f, "until_s", None)
        if until is not None and until <= f.at_s:
            raise ScenarioError(f"{source}: faults[{i}].until_s must be after at_s")
        if isinstance(f, CrashFault) and until is not None and until < f.at_s + f.over_s:
            raise ScenarioError(f"{source}: faults[{i}].until_s must not come before at_s + over_s")
    for r in s.routers:
        if r.placement and (len(r.placement) != r.count or sum(r.placement) <= 0):
            raise ScenarioError(f"{source}: routers.placement: one weight per router ({r.count}), not all zero")
        for i, rf in enumerate(r.faults):
            if rf.router >= r.count:
                raise ScenarioError(f"{source}: routers.faults[{i}].router: {rf.router} is not one of the {r.count} routers (0-based)")
            if rf.until_s is not None and rf.until_s <= rf.at_s:
                raise ScenarioError(f"{source}: routers.faults[{i}].until_s must be after at_s")


def _files_of(obj: object) -> list[str]:
    name = getattr(obj, "file", None)
    return [name] if isinstance(name, str) else []
