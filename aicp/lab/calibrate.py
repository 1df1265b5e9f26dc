"""``aicp calibrate``: measure the live stack's own costs, and check the simulator against live runs.

``aicp calibrate [--out FILE]`` starts a router that records a trace
(docs/TRACE.md), agents whose synthetic handler sleeps a constant whole number of
milliseconds, and one load generator at a low rate (agents about 10% busy, so
almost every task finds its agent idle). From the trace and the load generator's
samples it takes, per task (aicp/sim/stack.py says how each is used):

* ``wake_ms``: the agent's signed ``service_ms`` minus the probe's constant service;
* ``agent_overhead_ms``: router dispatch to router result, minus ``service_ms``
  (tasks whose agent had nothing in hand);
* ``client_ms``: the load generator's latency (from the intended send time) minus
  the router's arrival-to-end time, the k-th task sent matched to the k-th arrival
  from that load generator (one connection keeps the order);
* ``slot_ms``: one Ed25519 signature of a result-sized body (microbenchmark).

It writes them as JSON; a scenario names the file with ``[calibration] file = ...``.
The figures hold for this machine *at the time of the run*: on a shared machine
rerun it right before comparing.

``aicp calibrate --grid DIR`` calibrates (or takes ``--calibration FILE``), then for
every scenario file in DIR (one agent group, one Poisson workload) and each of its
strategies runs the workload live (a fresh router per strategy) and in the
simulator without and with the calibration, and prints the p50/p99 table side by
side (also ``grid.csv`` and ``grid.json`` in the run folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from aicp import trace
from aicp.lab.bench import live
from aicp.sim import scenario as sc_mod
from aicp.sim import stack as stack_mod

PROBE_ID = "calibrate"
MAX_SAMPLES = 5000


# ----------------------------------------------------------------------------- measuring
def bench_args(**changes: Any) -> argparse.Namespace:
    """``aicp bench``'s defaults with ``changes`` applied (the orchestration functions read these)."""
    parser = argparse.ArgumentParser()
    live.add_arguments(parser)
    ns = parser.parse_args([])
    for key, value in changes.items():
        setattr(ns, key, value)
    return ns


def sign_cost_ms(repeat: int = 2000) -> float:
    """Median time of one Ed25519 signature over a result-sized body (ms)."""
    from aicp.signing import Identity

    ident = Identity.generate()
    body = b"x" * 400
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        ident.sign(body)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def _thin(values: np.ndarray) -> list[float]:
    if values.size > MAX_SAMPLES:
        values = np.random.default_rng(0).choice(values, MAX_SAMPLES, replace=False)
    return [round(float(v), 4) for v in values]


def analyse(trace_path: Path, gen_npz: Path, requester: str, probe_ms: float, skip_s: float = 0.5) -> dict[str, Any]:
    """Per-task samples from a probe run's trace and its load generator's samples."""
    arrive: dict[str, float] = {}
    order: list[str] = []
    first_dispatch: dict[str, tuple[float, str]] = {}
    reply: dict[str, tuple[float, float | None, str]] = {}
    end: dict[str, tuple[float, str]] = {}
    for ev in trace.parse(trace_path.read_bytes()):
        if isinstance(ev, trace.Arrive) and ev.task[len(requester):len(requester) + 1] in ("/", "\n") and ev.task.startswith(requester):
            arrive[ev.task] = ev.t
            order.append(ev.task)
        elif isinstance(ev, trace.Dispatch) and ev.attempt == 1:
            first_dispatch[ev.task] = (ev.t, ev.agent)
        elif isinstance(ev, trace.Reply) and ev.ok:
            reply[ev.task] = (ev.t, ev.service_ms, ev.agent)
        elif isinstance(ev, trace.End):
            end[ev.task] = (ev.t, ev.outcome)
    # agent idle at dispatch: its previous result came back before this dispatch (concurrency 1)
    wake, overhead = [], []
    last_result: dict[str, float] = {}
    for task in sorted(first_dispatch, key=lambda k: first_dispatch[k][0]):
        t_d, agent = first_dispatch[task]
        got = reply.get(task)
        if task not in arrive or got is None or got[1] is None or got[2] != agent:
            continue
        t_r, service_ms, _ = got
        idle = last_result.get(agent, float("-inf")) < t_d
        last_result[agent] = max(last_result.get(agent, float("-inf")), t_r)
        if idle:
            wake.append(service_ms - probe_ms)
            overhead.append((t_r - t_d) * 1000.0 - service_ms)
    data = np.load(gen_npz)
    intended, sent, done, outcome = data["intended"], data["sent"], data["done"], data["outcome"]
    client: list[float] = []
    if len(order) != len(intended):
        raise RuntimeError(f"{trace_path}: {len(order)} arrivals from {requester} but the load generator sent {len(intended)}")
    for k, task in enumerate(order):
        e = end.get(task)
        if e is None or e[1] != "completed" or outcome[k] != 0 or intended[k] < skip_s:
            continue
        live_ms = (done[k] - max(intended[k], sent[k])) * 1000.0
        client.append(live_ms - (e[0] - arrive[task]) * 1000.0)
    if len(wake) < 50 or len(client) < 50:
        raise RuntimeError(f"too few probe tasks to calibrate ({len(wake)} idle dispatches, {len(client)} matched outcomes)")
    return {"wake_ms": np.array(wake), "agent_overhead_ms": np.array(overhead), "client_ms": np.array(client)}


def measure(args: argparse.Namespace) -> tuple[stack_mod.Calibration, Path]:
    """Run the probe and return the calibration and its run folder."""
    run_dir = args.out_dir / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    probe_s = args.probe_ms / 1000.0
    rate = args.probe_busy * args.agents / probe_s
    trace_path = run_dir / "probe.jsonl"
    cfg = bench_args(agents=args.agents, agent_procs=min(args.agent_procs, args.agents), agent_concurrency=1,
                     service_time=f"constant:{args.probe_ms:g}", strategy="least_loaded", record=trace_path, seed=args.seed)
    trial = live.Trial("open", rate=rate, duration=args.duration, warmup=1.0)
    fleet = live.Fleet(run_dir)
    print(f"calibrate: {args.agents} agents in {cfg.agent_procs} processes, constant {args.probe_ms:g} ms, {rate:.0f} tasks/s "
          f"for {args.duration:g} s (agents ~{100 * args.probe_busy:.0f}% busy)", flush=True)
    try:
        url = live.start_system(fleet, "router", cfg)
        result = live.run_trial(fleet, url, trial, cfg, PROBE_ID)
    finally:
        fleet.stop()  # the router flushes its trace when it stops
    got = analyse(trace_path, run_dir / f"{PROBE_ID}-gen0.npz", f"{PROBE_ID}-gen0", args.probe_ms)
    cal = stack_mod.Calibration(
        v=stack_mod.CALIBRATION_VERSION,
        timer_ms=args.timer_ms,
        wake_ms=_thin(got["wake_ms"]),
        slot_ms=round(sign_cost_ms(), 4),
        agent_overhead_ms=_thin(got["agent_overhead_ms"]),
        client_ms=_thin(got["client_ms"]),
        measured={
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "probe": {"agents": args.agents, "agent_procs": cfg.agent_procs, "service_ms": args.probe_ms, "rate_per_s": rate, "duration_s": args.duration},
            "probe_latency_ms": result["latency_ms"],
            "cpu": result["cpu"],
            "idle_dispatches": int(got["wake_ms"].size),
            "matched_outcomes": int(got["client_ms"].size),
        },
    )
    return cal, run_dir


def write(cal: stack_mod.Calibration, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(cal), indent=1))


def describe(cal: stack_mod.Calibration) -> str:
    s = stack_mod.summary(cal)
    return (f"timer {s['timer_ms']:g} ms, slot +{s['slot_ms']:.3f} ms; wake mean {s['wake_mean_ms']:.3f} (p50 {s['wake_p50_ms']:.3f}) ms; "
            f"agent round trip mean {s['agent_overhead_mean_ms']:.3f} (p50 {s['agent_overhead_p50_ms']:.3f}) ms; "
            f"client mean {s['client_mean_ms']:.3f} (p50 {s['client_p50_ms']:.3f}) ms")


# ----------------------------------------------------------------------------- the grid
def live_args_for(scenario: sc_mod.Scenario, path: Path, strategy: str, args: argparse.Namespace) -> argparse.Namespace:
    """Bench settings that reproduce a one-group, one-Poisson-workload scenario; anything else is refused."""
    if len(scenario.agents) != 1 or len(scenario.workload) != 1:
        raise SystemExit(f"{path}: the grid takes one agent group and one workload")
    group, work = scenario.agents[0], scenario.workload[0]
    if not isinstance(work.arrival, sc_mod.PoissonArrival):
        raise SystemExit(f"{path}: the grid takes Poisson arrivals")
    dist = group.service_time
    if isinstance(dist, sc_mod.LognormalDist) and dist.sigma != 0.5:
        raise SystemExit(f"{path}: live agents draw lognormal service with sigma 0.5, the file says {dist.sigma}")
    if not isinstance(dist, sc_mod.ConstantDist | sc_mod.ExponentialDist | sc_mod.LognormalDist):
        raise SystemExit(f"{path}: live agents support constant, exponential and lognormal service")
    if scenario.faults or group.fail_prob or scenario.network.loss:
        raise SystemExit(f"{path}: the grid runs no faults, failures or loss")
    tag = type(dist).__struct_config__.tag
    return bench_args(agents=group.count, agent_procs=min(args.agent_procs, group.count), agent_concurrency=group.concurrency,
                      service_time=f"{tag}:{dist.mean_ms / group.speed:g}", rate=work.arrival.rate_per_s, strategy=strategy,
                      duration=args.live_duration, warmup=args.live_warmup, seed=args.seed)


def run_live(cfg: argparse.Namespace, run_dir: Path, tag: str) -> dict[str, Any]:
    fleet = live.Fleet(run_dir)
    try:
        url = live.start_system(fleet, "router", cfg)
        return live.run_trial(fleet, url, live.Trial("open", rate=cfg.rate, duration=cfg.duration, warmup=cfg.warmup), cfg, tag)
    finally:
        fleet.stop()


def run_sim(scenario: sc_mod.Scenario, strategy: str, calibration: Path | None) -> dict[str, float]:
    """Mean over the scenario's replications of each replication's p50 and p99 (as ``aicp sim`` reports them)."""
    from aicp.sim.engine import Simulation
    from aicp.sim.runner import replication_seed

    data = sc_mod.to_data(scenario)
    data["calibration"] = None if calibration is None else {"file": str(calibration.resolve())}
    sc = sc_mod.from_data(data, scenario.name)
    p50, p99, util = [], [], []
    for k in range(sc.replications):
        summary = Simulation(sc, strategy, replication_seed(sc.seed, k)).run().summary
        p50.append(summary["latency_ms"]["p50"])
        p99.append(summary["latency_ms"]["p99"])
        util.append(summary["utilisation"]["mean"])
    return {"p50": float(np.mean(p50)), "p99": float(np.mean(p99)), "utilisation": float(np.mean(util))}


def _err(pred: float, live_v: float) -> str:
    return f"{100.0 * (pred - live_v) / live_v:+.0f}%" if live_v > 0 else "n/a"


def grid(args: argparse.Namespace) -> int:
    files = sorted(args.grid.glob("*.toml")) if args.grid.is_dir() else [args.grid]
    if not files:
        raise SystemExit(f"{args.grid}: no scenario files")
    scenarios = [(f, sc_mod.load(f)) for f in files]
    t0 = time.monotonic()
    if args.calibration is not None:
        cal_path = args.calibration
        cal = stack_mod.load(cal_path)
        run_dir = args.out_dir / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-grid")
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        cal, run_dir = measure(args)
        cal_path = run_dir / "calibration.json"
        write(cal, cal_path)
    print(f"calibration {cal_path}: {describe(cal)}", flush=True)
    rows: list[dict[str, Any]] = []
    header = (f"{'workload':22} {'strategy':13} {'util':>5} | {'live p50':>8} {'sim':>6} {'err':>5} {'cal':>6} {'err':>5} | "
              f"{'live p99':>8} {'sim':>6} {'err':>5} {'cal':>6} {'err':>5}")
    print(header + "\n" + "-" * len(header), flush=True)
    for path, scenario in scenarios:
        for strategy in scenario.strategies:
            cfg = live_args_for(scenario, path, strategy, args)
            lv = run_live(cfg, run_dir, f"{scenario.name}-{strategy}")
            plain = run_sim(scenario, strategy, None)
            withcal = run_sim(scenario, strategy, cal_path)
            lat = lv["latency_ms"]
            row = {"workload": scenario.name, "file": str(path), "strategy": strategy, "sim_utilisation": plain["utilisation"],
                   "live_p50": lat["p50"], "sim_p50": plain["p50"], "cal_p50": withcal["p50"],
                   "live_p99": lat["p99"], "sim_p99": plain["p99"], "cal_p99": withcal["p99"],
                   "live_samples": lat["samples"], "live_errors": lv["errors"], "live_lost": lv["lost"], "live_cpu": lv["cpu"]}
            rows.append(row)
            print(f"{scenario.name:22} {strategy:13} {plain['utilisation']:5.2f} | {lat['p50']:8.2f} {plain['p50']:6.2f} {_err(plain['p50'], lat['p50']):>5} "
                  f"{withcal['p50']:6.2f} {_err(withcal['p50'], lat['p50']):>5} | {lat['p99']:8.2f} {plain['p99']:6.2f} {_err(plain['p99'], lat['p99']):>5} "
                  f"{withcal['p99']:6.2f} {_err(withcal['p99'], lat['p99']):>5}", flush=True)
    within = [r for r in rows if all(abs(r[f"cal_{p}"] - r[f"live_{p}"]) <= 0.15 * r[f"live_{p}"] for p in ("p50", "p99"))]
    print(f"calibrated p50 and p99 within 15% of live: {len(within)} of {len(rows)} rows; "
          f"{time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    lines = ["workload,strategy,sim_utilisation,live_p50,sim_p50,cal_p50,live_p99,sim_p99,cal_p99,live_samples"]
    for r in rows:
        lines.append(",".join([r["workload"], r["strategy"], f"{r['sim_utilisation']:.3f}"] +
                              [f"{r[k]:.3f}" for k in ("live_p50", "sim_p50", "cal_p50", "live_p99", "sim_p99", "cal_p99")] + [str(r["live_samples"])]))
    (run_dir / "grid.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "grid.json").write_text(json.dumps({"calibration": str(cal_path), "calibration_summary": stack_mod.summary(cal), "rows": rows,
                                                   "load_avg_1m": os.getloadavg()[0], "argv": sys.argv}, indent=2, default=str))
    print(f"results: {run_dir}")
    return 0


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--out", type=Path, default=None, help="write the calibration here (default: calibration.json in the run folder)")
    add("--out-dir", type=Path, default=Path("results") / "calibration", help="parent of the run folder (default results/calibration)")
    add("--agents", type=int, default=4, help="probe: agents (default 4)")
    add("--agent-procs", type=int, default=2, help="processes the agents are spread over, probe and grid (default 2, as aicp bench)")
    add("--probe-ms", type=float, default=3.0, help="probe: the agents' constant service, whole milliseconds (default 3)")
    add("--probe-busy", type=float, default=0.1, help="probe: how busy each agent is (default 0.1)")
    add("--duration", type=float, default=8.0, help="probe: measured seconds (default 8)")
    add("--timer-ms", type=float, default=1.0, help="the agents' sleep granularity (uvloop: 1 ms; 0: none)")
    add("--grid", type=Path, default=None, help="a folder of scenario files (or one file): run each live and simulated, print the table")
    add("--calibration", type=Path, default=None, help="--grid: use this calibration instead of measuring one")
    add("--live-duration", type=float, default=10.0, help="--grid: measured seconds per live run (default 10)")
    add("--live-warmup", type=float, default=2.0, help="--grid: warm-up seconds per live run (default 2)")
    add("--seed", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    if args.grid is not None:
        return grid(args)
    cal, run_dir = measure(args)
    out = args.out if args.out is not None else run_dir / "calibration.json"
    write(cal, out)
    print(describe(cal))
    print(f"calibration: {out}")
    return 0
