"""A recorded live run (docs/TRACE.md) turned into a scenario the simulator runs.

``aicp sim --replay FILE`` and ``aicp compare --replay FILE`` call
:func:`scenario_from_trace`. What the trace fixes and what the simulator decides:

* **arrivals**: exactly the recorded sequence: each admitted task at its recorded
  time (time 0 is the first admitted task), with its method and deadline. One workload
  per (method, deadline) pair, each replaying its own arrivals file;
* **agents**: every agent that registered, with its capabilities and concurrency,
  joining and leaving at the recorded times (a crash fault for each absence, the
  first one from time 0 until it first registered);
* **service times**, by ``service``:

  - ``task`` (default): a task that completed keeps the handler time its agent
    signed into the result (``service_ms``), on whichever agent the simulated
    strategy sends it to; other tasks draw from the agent's own samples;
  - ``agent``: every task draws from the recorded samples of the agent it lands on
    (each agent's own empirical distribution), so a strategy that favours fast
    agents is rewarded as it would be live;

* **decisions**: dispatches, retries, hold-outs and outcomes are the simulated
  router's own: that is what a replay under another strategy asks.

The arrivals and per-agent samples are written as CSV files under ``folder`` (the
scenario's ``base_dir``), so the resolved scenario is an ordinary, re-runnable one.
Cost: one pass over the trace, memory linear in its tasks.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from aicp import trace
from aicp.sim import scenario as scenario_mod
from aicp.sim.scenario import Scenario, ScenarioError

ServiceMode = Literal["task", "agent"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "x"


def scenario_from_trace(
    data: bytes,
    folder: Path,
    name: str = "replay",
    service: ServiceMode = "task",
    strategies: list[str] | None = None,
    replications: int = 5,
    seed: int = 0,
    stack_costs: bool = False,
) -> Scenario:
    """Build the scenario of a trace (the file's bytes); write its arrivals and samples under ``folder``.

    ``stack_costs``: also charge the live stack's costs read from the same trace
    (:func:`aicp.sim.stack.costs_from_trace`: the hops of tasks dispatched to a free
    slot, the slot hand-over of tasks that waited; never a task's latency), written
    as ``stack.json`` in ``folder`` and named as the scenario's calibration. The
    latency is then still taken at the router, as a trace's arrive-to-end span is.
    """
    try:
        events = list(trace.parse(data, name))
    except trace.TraceError as exc:
        raise ScenarioError(str(exc)) from None
    header = events[0]
    assert isinstance(header, trace.Header)
    t0 = header.t
    agents: dict[str, trace.AgentUp] = {}
    absences: dict[str, list[list[float | None]]] = defaultdict(list)  # agent -> [[down_at, up_at|None], ...]
    samples: dict[str, list[float]] = defaultdict(list)
    arrivals: dict[str, trace.Arrive] = {}
    served_ms: dict[str, float] = {}
    end_t = t0
    for e in events[1:]:
        end_t = max(end_t, e.t)
        if isinstance(e, trace.AgentUp):
            if e.agent not in agents:
                agents[e.agent] = e
                if e.t > t0:
                    absences[e.agent].append([t0, e.t])
            elif absences[e.agent] and absences[e.agent][-1][1] is None:
                absences[e.agent][-1][1] = e.t
        elif isinstance(e, trace.AgentDown):
            if e.agent in agents and not (absences[e.agent] and absences[e.agent][-1][1] is None):
                absences[e.agent].append([e.t, None])
        elif isinstance(e, trace.Arrive):
            arrivals[e.task] = e
        elif isinstance(e, trace.Reply) and e.ok and e.service_ms is not None:
            samples[e.agent].append(e.service_ms)
            served_ms[e.task] = e.service_ms
    if not agents:
        raise ScenarioError(f"{name}: the trace has no agent")
    if not arrivals:
        raise ScenarioError(f"{name}: the trace has no task")
    # time 0 of the replay is the first admitted task: the minutes a router sat idle before it
    # are not part of the traffic (they would only dilute throughput); earlier agent events clamp to 0
    t0 = min(a.t for a in arrivals.values())
    folder.mkdir(parents=True, exist_ok=True)
    every_sample = [s for v in samples.values() for s in v]

    groups: list[dict[str, Any]] = []
    sim_id: dict[str, str] = {}
    for agent_id, up in agents.items():
        label = _safe(agent_id)
        sim_id[agent_id] = f"{label}-0000"
        own = samples.get(agent_id) or every_sample
        if own:
            path = folder / f"service-{label}.csv"
            path.write_text("service_ms\n" + "".join(f"{s!r}\n" for s in own))
            dist: dict[str, Any] = {"dist": "empirical", "file": path.name}
        else:
            dist = {"dist": "constant", "mean_ms": 0.0}
        groups.append({"name": label, "count": 1, "capabilities": list(up.capabilities), "concurrency": up.concurrency, "service_time": dist})
    if len(set(sim_id.values())) != len(sim_id):
        raise ScenarioError(f"{name}: two agent ids map to the same simulator id after sanitising")

    by_workload: dict[tuple[str, float | None], list[tuple[float, float | None]]] = defaultdict(list)
    for task, a in arrivals.items():
        by_workload[(a.method, a.timeout_ms)].append((a.t - t0, served_ms.get(task) if service == "task" else None))
    capable = {c for up in agents.values() for c in up.capabilities}
    workloads: list[dict[str, Any]] = []
    for i, ((method, timeout_ms), rows) in enumerate(sorted(by_workload.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0))):
        if method not in capable:
            continue  # every task of it ended as no-agent live; the simulator cannot route it either
        path = folder / f"arrivals-{i}.csv"
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["t_s", "method", "service_ms"])
            for t, ms in sorted(rows, key=lambda r: r[0]):
                w.writerow([repr(t), method, "" if ms is None else repr(ms)])
        wl: dict[str, Any] = {"method": method, "arrival": {"process": "trace", "file": path.name}}
        if timeout_ms is not None:
            wl["timeout_ms"] = timeout_ms
        workloads.append(wl)
    if not workloads:
        raise ScenarioError(f"{name}: no recorded task names a capability any recorded agent had")

    faults: list[dict[str, Any]] = []
    for agent_id, spans in absences.items():
        for down, back in spans:
            assert down is not None
            if back is not None and back <= t0:
                continue  # away and back before the traffic began
            f: dict[str, Any] = {"action": "crash", "at_s": max(down - t0, 0.0), "agents": [sim_id[agent_id]]}
            if back is not None and back > down:
                f["until_s"] = back - t0
            faults.append(f)
    faults.sort(key=lambda f: f["at_s"])

    cfg = header.config
    router: dict[str, Any] = {}
    if "attempt_timeout_s" in cfg:
        router["timeout_ms"] = 1000.0 * float(cfg["attempt_timeout_s"])
    for key in ("heartbeat_s", "lease_s"):
        if key in cfg:
            router[key] = float(cfg[key])
    data_out: dict[str, Any] = {
        "name": _safe(name),
        "duration_s": max(end_t - t0, 1e-3) + 1e-6,
        "agents": groups,
        "workload": workloads,
        "faults": faults,
        "router": router,
        "replications": replications,
        "seed": seed,
        "base_dir": str(folder.resolve()),
    }
    if strategies:
        data_out["strategies"] = strategies
    if stack_costs:
        from aicp.sim import stack

        try:
            cal = stack.from_run(stack.costs_from_trace(events), handler=False, measured={"from_trace": name})
        except stack.CalibrationError as exc:
            raise ScenarioError(f"{name}: {exc}") from None
        stack.write(cal, folder / "stack.json")
        data_out["calibration"] = {"file": "stack.json"}
    return scenario_mod.from_data(data_out, name)
