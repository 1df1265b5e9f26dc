"""``aicp bench --scenario FILE`` and ``aicp bench --arrivals TRACE``: run a plan live.

A plan (``aicp.lab.bench.scenario_plan``) says which router flags, agent processes,
arrival schedule and fault steps a run has. This module starts them, kills and
restarts agent processes at the fault steps' times (measured from the schedule's
time 0, which the load generators share through ``--start-at``), and summarises the
load generators' samples like any ``aicp bench`` run. One router per strategy, each
on the same schedule. Results: ``results/bench/<run-id>/summary.json``.

``--arrivals TRACE`` replays the ``arrive`` events of a recorded run (times, methods,
deadlines, payload sizes) against agents made from the usual flags (``--agents``,
``--agent-procs``, ``--service-time``, ``--agent-concurrency``), serving every method
the trace names; the router takes the recorded attempt timeout, heartbeat and lease.
Every task is measured (no warm-up), as in ``aicp sim --replay``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aicp import __version__
from aicp.lab.bench import schedule as schedule_mod
from aicp.lab.bench.live import (
    Fleet,
    Proc,
    Trial,
    _agents_ready,
    _wait_port,
    format_result,
    free_port,
    own_fleet_flags,
    registration_timeout,
    summarise,
    write_summary,
)
from aicp.lab.bench.scenario_plan import AgentProc, AgentSpec, Plan, build_plan
from aicp.live.handlers import parse_service_time
from aicp.sim import scenario as scenario_mod
from aicp.sim.scenario import ScenarioError

STARTUP_S = 2.0  # load generators start, connect and register before the schedule's time 0


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The plan of ``--scenario FILE`` or of ``--arrivals TRACE`` (raises ``ScenarioError`` naming what is wrong)."""
    if args.scenario is not None:
        overrides: dict[str, Any] = {}
        if args.warmup is not None:
            overrides["warmup_s"] = args.warmup
        if args.duration is not None:
            overrides["duration_s"] = (args.warmup if args.warmup is not None else scenario_mod.load(args.scenario).warmup_s) + args.duration
        sc = scenario_mod.load(args.scenario, overrides)
        return build_plan(sc, str(args.scenario), args.strategy, args.agent_procs)
    return arrivals_plan(Path(args.arrivals), args)


def arrivals_plan(path: Path, args: argparse.Namespace) -> Plan:
    from aicp import trace

    try:
        sched, header = schedule_mod.from_trace(path.read_bytes(), path.name)
    except (OSError, trace.TraceError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    dist, mean_ms = parse_service_time(args.service_time)
    service: dict[str, Any] = {"dist": dist, "mean_ms": mean_ms}
    if getattr(args, "agent_sigma", None) is not None:  # aicp bench --service-sigma (a lognormal only: live.check_sigma)
        service["sigma"] = float(args.agent_sigma)
    specs = [AgentSpec(f"replay-{i:04d}", "replay", list(sched.methods), args.agent_concurrency, service, 1.0, 0.0, args.seed * 1000 + i)
             for i in range(args.agents)]
    chunks = max(1, min(args.agent_procs, len(specs)))
    procs = [AgentProc(f"replay-p{c}", specs[c::chunks]) for c in range(chunks)]
    cfg = header.config
    flags: list[str] = []
    for key, flag in (("attempt_timeout_s", "--attempt-timeout"), ("heartbeat_s", "--heartbeat"), ("lease_s", "--lease")):
        if key in cfg:
            flags += [flag, repr(float(cfg[key]))]
    return Plan(name=f"arrivals-{path.name.split('.')[0]}", duration_s=float(sched.t_s[-1]) + 1e-3, warmup_s=0.0,
                strategies=[args.strategy or header.strategy], router_flags=flags, procs=procs, latency=None, schedule=sched,
                steps=[], default_deadline_s=30.0, not_applicable=[])


def _record_path(record: Path | None, strategy: str, many: bool) -> Path | None:
    if record is None or not many:
        return record
    stem, dot, rest = record.name.partition(".")
    return record.with_name(f"{stem}-{strategy}{dot}{rest}")


def run_strategy(plan: Plan, strategy: str, args: argparse.Namespace, run_dir: Path, record: Path | None) -> dict[str, Any]:
    """One router with ``strategy``, the plan's agents, load and faults; the usual bench result plus the faults run."""
    fleet = Fleet(run_dir)
    try:
        port = free_port()
        fleet.spawn("router", ["-m", "aicp.server", "--port", str(port), "--strategy", strategy, "--verify", args.verify, "--log-level", "WARNING",
                               "--rate", "1000000", "--seed", str(args.seed), *own_fleet_flags(plan.agents), *plan.router_flags,
                               *(["--record", str(record)] if record else [])])
        _wait_port(port, 15)
        url = f"ws://127.0.0.1:{port}"
        by_name: dict[str, AgentProc] = {p.name: p for p in plan.procs}
        running: dict[str, Proc] = {}
        killed_cpu_s = 0.0  # CPU of agent processes a fault killed, taken just before the kill

        def start(name: str) -> None:
            spec_path = run_dir / f"{strategy}-{name}.json"
            spec_path.write_text(json.dumps(by_name[name].spec(url, plan.latency)))
            faulted = any(s.proc == name for s in plan.steps)
            running[name] = fleet.spawn("agent-faulted" if faulted else "agents", ["-m", "aicp.lab.bench.scenario_agents", "--spec", str(spec_path)])

        for name in by_name:
            start(name)
        _agents_ready(f"http://127.0.0.1:{port}", plan.agents, registration_timeout(plan.agents))
        fleet.mark_cpu()
        parts = max(1, min(args.loadgens, len(plan.schedule)))
        start_at = time.time() + STARTUP_S + 0.3 * parts
        outs, gens = [], []
        for i, part in enumerate(plan.schedule.split(parts)):
            sched_path = run_dir / f"{strategy}-gen{i}-schedule.npz"
            part.save(sched_path)
            out = run_dir / f"{strategy}-gen{i}.npz"
            outs.append(out)
            gens.append(fleet.spawn("loadgen", ["-m", "aicp.lab.bench.loadgen", "--url", url, "--id", f"{strategy}-gen{i}", "--schedule", str(sched_path),
                                                "--start-at", repr(start_at), "--warmup", repr(plan.warmup_s),
                                                "--duration", repr(plan.duration_s - plan.warmup_s), "--task-timeout", repr(plan.default_deadline_s),
                                                "--out", str(out)]))
        done_steps = []
        for step in plan.steps:
            while time.time() < start_at + step.t_s and any(g.popen.poll() is None for g in gens):
                time.sleep(min(0.01, max(0.0, start_at + step.t_s - time.time())))
            if all(g.popen.poll() is not None for g in gens):
                break  # the load is over (or failed): later steps have nothing to act on
            if step.action == "kill":
                proc = running.pop(step.proc, None)
                if proc is not None and proc.popen.poll() is None:
                    used = proc.cpu_s() - proc.cpu0
                    killed_cpu_s += used if used == used else 0.0
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait(timeout=5)
                    fleet.procs.remove(proc)
            elif step.proc not in running:
                start(step.proc)
            done_steps.append({"t_s": round(time.time() - start_at, 4), "planned_t_s": step.t_s, "action": step.action, "proc": step.proc, "fault": step.source})
        limit = start_at + plan.duration_s + plan.schedule.max_deadline_s(plan.default_deadline_s) + 30.0
        for g in gens:
            g.popen.wait(timeout=max(1.0, limit - time.time()))
            if g.popen.returncode != 0:
                raise RuntimeError(f"load generator failed (exit {g.popen.returncode}); see {run_dir}")
        wall = time.time() - start_at
        cpu = fleet.cpu_by_role(wall)
        if killed_cpu_s:
            row = cpu.setdefault("agent-faulted", {"processes": 0, "cpu_s": 0.0})
            row["cpu_s"] += killed_cpu_s
            row["cpu_percent_of_one_core"] = 100.0 * row["cpu_s"] / wall
        rate = len(plan.schedule) / plan.duration_s
        result = summarise(outs, Trial("open", rate=rate, duration=plan.duration_s - plan.warmup_s, warmup=plan.warmup_s), cpu)
        result["strategy"] = strategy
        result["faults_run"] = done_steps
        if record is not None:
            result["record"] = str(record)
        return result
    finally:
        fleet.stop()


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_from_args(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    source = f"scenario {args.scenario}" if args.scenario is not None else f"arrivals of {args.arrivals}"
    print(f"AICP {__version__} live benchmark {run_id}: {source}: {plan.agents} agents in {len(plan.procs)} processes, {len(plan.schedule)} tasks "
          f"over {plan.duration_s:g} s (warm-up {plan.warmup_s:g} s), {len(plan.steps)} fault steps, strategies {', '.join(plan.strategies)}")
    if plan.not_applicable:
        print(f"  simulator model knobs not applicable live (the live stack has these costs for real): {', '.join(plan.not_applicable)}")
    summary: dict[str, Any] = {"run_id": run_id, "version": __version__, "kind": "scenario" if args.scenario is not None else "arrivals",
                               "source": str(args.scenario or args.arrivals), "plan": {
                                   "router_flags": plan.router_flags, "latency": plan.latency, "not_applicable": plan.not_applicable,
                                   "procs": [{"name": p.name, "agents": [a.id for a in p.agents]} for p in plan.procs],
                                   "steps": [vars(s) for s in plan.steps], "tasks": len(plan.schedule), "methods": plan.schedule.methods},
                               "results": {}}
    status = 0
    for strategy in plan.strategies:
        try:
            r = run_strategy(plan, strategy, args, run_dir, _record_path(args.record, strategy, len(plan.strategies) > 1))
        except Exception as exc:
            summary.setdefault("errors", {})[strategy] = f"{type(exc).__name__}: {exc}"
            print(f"{strategy}: failed: {exc}", file=sys.stderr)
            status = 1
            continue
        summary["results"][strategy] = r
        print(format_result(strategy[:8], r), flush=True)
        if r["lost"]:
            status = 1
    write_summary(run_dir, summary, args.json)
    return status
