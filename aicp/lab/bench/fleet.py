"""``aicp bench-fleet``: the live router with fleets of very different sizes, in one run.

For each fleet size N (``--agents 8,10000``) it starts a fresh router and N real
agents spread over ``--agent-procs`` processes on 127.0.0.1, then measures:

* **registration**: seconds from starting the agent processes until the router
  counts N active agents, the rate in agents/s, and the CPU the router and the
  agent processes spent per registration (ms; this does not depend on how loaded
  the machine is, the seconds do). The agents' keys are created before the clock
  starts (``keys_s`` says how long that took): registration is measured as a fleet
  that already has its keys, as after a restart;
* **memory**: the router's RSS before any agent and after all registered, and the
  difference per connected agent;
* **heartbeats**: CPU of the router and of the agents over an idle window of
  ``--idle`` seconds, and the router's CPU per frame received in it (the frames are
  the heartbeats; counted by the router's ``aicp_frames_total``);
* **routing**: a closed-loop trial (``--concurrency``) among the N agents, with the
  same load generator as ``aicp bench``, measured over the same ``--duration`` for every
  fleet after a warm-up long enough to reach every agent once (``warmup_for``); throughput is reported as a ratio to the
  first (smallest) fleet of the same run, with the router's and the agent processes'
  CPU per task, to tell the router's own cost per decision from CPU taken by the agents;
  and the heartbeats that still arrived meanwhile (an agent whose results renew its
  lease sends none, PROTOCOL.md §6; one not dispatched to yet still does), with the
  CPU per task less theirs at the idle window's cost per heartbeat.

Everything it starts is stopped by PID, whatever happens. Results go to
``results/bench-fleet/<run-id>/summary.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aicp import __version__
from aicp.lab.bench.live import (
    Fleet,
    Proc,
    Trial,
    _wait_port,
    active_agents,
    agent_groups,
    exit_on_sigterm,
    free_port,
    own_fleet_flags,
    registration_timeout,
    run_trial,
    start_agents,
    write_summary,
)
from aicp.live.keys import identity_for

GOAL_REGISTER_S_AT_10K = 20.0
GOAL_RSS_MB_AT_10K = 400.0
GOAL_THROUGHPUT_RATIO = 0.90


def frames_in(http: str) -> float:
    """The router's ``aicp_frames_total`` (frames received from peers), read from ``/metrics``."""
    with urllib.request.urlopen(http + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("aicp_frames_total "):
                return float(line.split()[1])
    raise RuntimeError("the router's /metrics has no aicp_frames_total")


def make_keys(n: int, agent_procs: int, key_dir: Path) -> float:
    """Create the key files the agents of ``start_agents`` will load (ids ``bench-I-J``); returns the seconds taken."""
    t0 = time.monotonic()
    for base_id, count, _ in agent_groups(n, agent_procs):
        for agent_id in [base_id] if count == 1 else [f"{base_id}-{j}" for j in range(count)]:
            identity_for(agent_id, key_dir=key_dir)
    return time.monotonic() - t0


def _per(cpu: dict[str, dict[str, float]], role: str, count: float, scale: float) -> float:
    """``scale`` × the CPU seconds of ``role`` per unit of ``count`` (NaN if none)."""
    used = cpu.get(role, {}).get("cpu_s")
    return scale * used / count if used is not None and count else float("nan")


def _net_of_idle(busy: dict[str, dict[str, float]], idle: dict[str, dict[str, float]], idle_s: float, tasks: float,
                 idle_beats: float = 0.0, busy_beats: float | None = None) -> dict[str, float]:
    """CPU per task (us) by role, less what keeping the fleet alive cost meanwhile: the cost of routing itself.

    With ``busy_beats`` (heartbeats that arrived during the routing trial) and heartbeats in the
    idle window, the idle window's CPU per heartbeat times ``busy_beats`` is taken off: agents
    whose results renew their leases send fewer heartbeats under load than idle. Otherwise the
    idle window's CPU rate over the trial's wall time is.
    """
    out = {}
    for role, row in busy.items():
        pct = row.get("cpu_percent_of_one_core", float("nan"))
        wall = 100.0 * row["cpu_s"] / pct if pct and pct == pct else float("nan")
        idle_cpu = idle.get(role, {}).get("cpu_s", 0.0)
        if busy_beats is not None and idle_beats > 0:
            keep_alive = idle_cpu / idle_beats * busy_beats
        else:
            keep_alive = (idle_cpu / idle_s if idle_s else 0.0) * wall
        out[role] = 1e6 * (row["cpu_s"] - keep_alive) / tasks if tasks else float("nan")
    return out


def _rss_mb(proc: Proc) -> float:
    return float(proc.ps.memory_info().rss) / 2**20


def warmup_for(n: int, cfg: argparse.Namespace, first_throughput: float | None) -> float:
    """Seconds of load before the routing trial's measured window for a fleet of ``n``.

    ``--warmup S`` gives S to every fleet. By default (auto) it is 2 s, or for a later fleet
    the time the first fleet's throughput takes to send ``n`` tasks, if longer (at most 20 s):
    round robin then reaches every agent once before the window, so the window sees the
    fleet's steady state under load, in which an agent's results renew its lease and it
    sends no heartbeats (PROTOCOL.md §6), not the idle fleet's heartbeats still running out.
    """
    if cfg.warmup is not None:
        return float(cfg.warmup)
    if not first_throughput:
        return 2.0
    return min(20.0, max(2.0, n / first_throughput))


def measure_fleet(n: int, cfg: argparse.Namespace, run_dir: Path, warmup: float = 2.0) -> dict[str, Any]:
    """Start a router and ``n`` agents, measure, stop everything. Returns one row."""
    fleet = Fleet(run_dir)
    sized = argparse.Namespace(**{**vars(cfg), "agents": n, "agent_procs": max(1, min(cfg.agent_procs, n))})
    try:
        port = free_port()
        router = fleet.spawn("router", ["-m", "aicp.server", "--port", str(port), "--strategy", cfg.strategy, "--log-level", "WARNING",
                                        "--rate", "1000000", "--heartbeat", str(cfg.heartbeat), "--lease", str(3 * cfg.heartbeat),
                                        *own_fleet_flags(n)])
        _wait_port(port, 15)
        http = f"http://127.0.0.1:{port}"
        time.sleep(0.5)
        rss0 = _rss_mb(router)
        keys_s = make_keys(n, sized.agent_procs, run_dir / "keys")
        fleet.mark_cpu()
        t0 = time.monotonic()
        start_agents(fleet, f"ws://127.0.0.1:{port}", sized)
        deadline = t0 + registration_timeout(n)
        seen = 0
        poll_s = 0.0
        while seen < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {seen} of {n} agents registered after {registration_timeout(n):g} s")
            time.sleep(0.05)
            asked = time.monotonic()
            try:
                seen = active_agents(http)
            except (OSError, ValueError):
                continue
            finally:
                poll_s = time.monotonic() - asked
        register_s = time.monotonic() - t0  # an upper bound: the last /healthz took poll_s to answer
        registering = fleet.cpu_by_role(register_s)
        time.sleep(1.0)
        rss1 = _rss_mb(router)
        # idle: only heartbeats cross the router
        fleet.mark_cpu()
        frames0 = frames_in(http)
        idle_s = cfg.idle
        time.sleep(idle_s)
        idle = fleet.cpu_by_role(idle_s)
        beats = frames_in(http) - frames0
        trial = Trial("closed", concurrency=cfg.concurrency, duration=cfg.duration, warmup=warmup)
        frames1 = frames_in(http)
        routed = run_trial(fleet, f"ws://127.0.0.1:{port}", trial, sized, f"fleet-{n}")
        # every other frame in the trial is a load generator's registration, a task or its result
        busy_beats = max(0.0, frames_in(http) - frames1 - cfg.loadgens - routed["submitted"] - routed["completed"])
        rss2 = _rss_mb(router)
        tasks = routed["completed"]
        return {
            "agents": n,
            "agent_procs": sized.agent_procs,
            "keys_s": keys_s,
            "register_s": register_s,
            "register_per_s": n / register_s,
            "register_last_poll_s": poll_s,
            "register_cpu_ms_per_agent": {role: _per(registering, role, n, 1e3) for role in registering},
            "router_rss_mb": {"empty": rss0, "registered": rss1, "after_load": rss2},
            "router_kb_per_agent": 1024.0 * (rss1 - rss0) / n,
            "idle_s": idle_s,
            "heartbeat_s": cfg.heartbeat,
            "idle_frames": beats,
            "idle_cpu_percent": {role: v["cpu_percent_of_one_core"] for role, v in idle.items()},
            "router_us_per_heartbeat": _per(idle, "router", beats, 1e6),
            "agents_us_per_heartbeat": _per(idle, "agents", beats, 1e6),
            "routing": routed,
            "routing_cpu_us_per_task": {role: _per(routed["cpu"], role, tasks, 1e6) for role in routed["cpu"]},
            "routing_heartbeats": busy_beats,
            "routing_cpu_us_per_task_net_of_idle": _net_of_idle(routed["cpu"], idle, idle_s, tasks, beats, busy_beats),
        }
    finally:
        fleet.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--agents", default="8,10000", help="fleet sizes, comma-separated; ratios are to the first (default 8,10000)")
    add("--agent-procs", type=int, default=4, help="processes the agents are spread over (default 4)")
    add("--agent-concurrency", type=int, default=64, help="tasks each agent runs at once (default 64)")
    add("--service-time", default="constant:0", help="synthetic service time [DIST:]MS (default constant:0)")
    add("--strategy", default="round_robin")
    add("--verify", choices=["every-hop", "edge"], default="every-hop")
    add("--heartbeat", type=float, default=30.0, metavar="S", help="heartbeat interval the router asks for (default 30, the router's; lease is 3x)")
    add("--idle", type=float, default=10.0, metavar="S", help="idle window in which only heartbeats arrive (default 10 s)")
    add("--concurrency", type=int, default=64, help="closed-loop tasks in flight (default 64)")
    add("--duration", type=float, default=6.0, help="measured seconds of the routing trial (default 6)")
    add("--warmup", type=float, default=None, metavar="S",
        help="seconds of load before each routing trial's window (default: 2, or for a later fleet long enough for the first fleet's throughput to reach each agent once, at most 20)")
    add("--loadgens", type=int, default=1)
    add("--task-timeout", type=float, default=10.0)
    add("--seed", type=int, default=1)
    add("--out", type=Path, default=Path("results") / "bench-fleet", help="parent folder of the run folder")


def run(args: argparse.Namespace) -> int:
    exit_on_sigterm()  # so that every process started is stopped (finally blocks)
    sizes = [int(x) for x in str(args.agents).split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        print("error: --agents takes positive sizes, e.g. 8,10000", file=sys.stderr)
        return 2
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"run_id": run_id, "version": __version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                               "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}, "fleets": []}
    print(f"AICP {__version__} fleet benchmark {run_id}: sizes {sizes}, {args.agent_procs} agent processes, heartbeat {args.heartbeat:g} s, "
          f"closed loop at concurrency {args.concurrency}")
    status = 0
    try:
        first_throughput: float | None = None
        for n in sizes:
            row = measure_fleet(n, args, run_dir, warmup_for(n, args, first_throughput))
            if first_throughput is None:
                first_throughput = row["routing"]["throughput_per_s"]
            summary["fleets"].append(row)
            r = row["routing"]
            reg = row["register_cpu_ms_per_agent"]
            per_task = row["routing_cpu_us_per_task"]
            print(f"{n:>7} agents  registered in {row['register_s']:6.2f} s ({row['register_per_s']:7.0f}/s; CPU per agent: router "
                  f"{reg.get('router', float('nan')):.2f} ms, agents {reg.get('agents', float('nan')):.2f} ms; keys made in {row['keys_s']:.1f} s before; "
                  f"the last /healthz poll took {row['register_last_poll_s']:.2f} s)", flush=True)
            print(f"         router RSS {row['router_rss_mb']['empty']:.0f} -> {row['router_rss_mb']['registered']:.0f} MB ({row['router_kb_per_agent']:.1f} KB/agent), "
                  f"{row['router_rss_mb']['after_load']:.0f} MB after load", flush=True)
            print(f"         idle {row['idle_s']:g} s: CPU router {row['idle_cpu_percent'].get('router', float('nan')):.1f}% agents "
                  f"{row['idle_cpu_percent'].get('agents', float('nan')):.1f}% of one core ({row['idle_frames']:.0f} heartbeats; per heartbeat router "
                  f"{row['router_us_per_heartbeat']:.0f} us, agents {row['agents_us_per_heartbeat']:.0f} us)", flush=True)
            print(f"         routing ({r['warmup_s']:.1f} s warm-up): {r['throughput_per_s']:.0f}/s  p50 {r['latency_ms']['p50']:.2f}  p99 {r['latency_ms']['p99']:.2f} ms  lost {r['lost']}; "
                  f"CPU per task: router {per_task.get('router', float('nan')):.0f} us, agents {per_task.get('agents', float('nan')):.0f} us, "
                  f"load generator {per_task.get('loadgen', float('nan')):.0f} us; about {row['routing_heartbeats']:.0f} heartbeats meanwhile "
                  f"(less their CPU: router "
                  f"{row['routing_cpu_us_per_task_net_of_idle'].get('router', float('nan')):.0f} us, agents "
                  f"{row['routing_cpu_us_per_task_net_of_idle'].get('agents', float('nan')):.0f} us)", flush=True)
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {summary['error']}", file=sys.stderr)
        status = 1
    fleets = summary["fleets"]
    if len(fleets) >= 2:
        base = fleets[0]["routing"]["throughput_per_s"]
        for row in fleets:
            row["throughput_ratio_to_first"] = row["routing"]["throughput_per_s"] / base if base else float("nan")
        big = fleets[-1]
        checks = [
            (f"{big['agents']} agents registered in < {GOAL_REGISTER_S_AT_10K:g} s", big["register_s"] < GOAL_REGISTER_S_AT_10K, f"{big['register_s']:.1f} s"),
            (f"router RSS < {GOAL_RSS_MB_AT_10K:g} MB with {big['agents']} agents", big["router_rss_mb"]["after_load"] < GOAL_RSS_MB_AT_10K,
             f"{big['router_rss_mb']['after_load']:.0f} MB"),
            (f"throughput with {big['agents']} within 10% of {fleets[0]['agents']}", big["throughput_ratio_to_first"] >= GOAL_THROUGHPUT_RATIO,
             f"{big['throughput_ratio_to_first']:.2f}x"),
        ]
        summary["verdicts"] = [{"check": c, "pass": ok, "measured": m} for c, ok, m in checks]
        for c, ok, m in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {c:48} {m}")
        small_cost, big_cost = fleets[0]["routing_cpu_us_per_task"], big["routing_cpu_us_per_task"]
        summary["router_cpu_per_task_ratio"] = big_cost.get("router", float("nan")) / small_cost.get("router", float("nan"))
        print(f"  (router CPU per task with {big['agents']} agents is {summary['router_cpu_per_task_ratio']:.2f}x that with {fleets[0]['agents']}; "
              f"agent processes {big_cost.get('agents', float('nan')) / small_cost.get('agents', float('nan')):.2f}x)")
    if any(row["routing"]["lost"] for row in fleets):
        status = 1
    write_summary(run_dir, summary)
    return status
