"""``aicp bench``: measure the live router with real processes on 127.0.0.1.

By default it starts a router (``python -m aicp.server``), agent processes (the
``synthetic`` handler, 0 ms service unless told otherwise) and load-generator
processes, measures, and stops every process it started. ``--url`` targets a
router that is already running (agents must then already be connected).

Latency percentiles come from every raw sample (no average of averages).
Open-loop latency is measured from each task's intended send time (never from an
earlier actual send), so a stalled router cannot hide its delay, to the moment the load
generator holds the verified result.
Results go to ``results/bench/<run-id>/`` (``summary.json`` and the raw samples).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from aicp import __version__
from aicp.lab.bench import floor as bench_floor
from aicp.lab.bench import noise as bench_noise
from aicp.live.handlers import parse_service_time

#: The original design's claims, which are the floor.
TARGET_P99_MS = 50.0
TARGET_THROUGHPUT = 1000.0
#: The goals for this project on a 2-core machine (issue: evidence).
GOAL_P50_MS_AT_1000 = 1.0
GOAL_P99_MS_AT_1000 = 5.0
GOAL_SATURATION = 3000.0
GOAL_RELAY_RATIO = 0.70

METHOD = "bench.synthetic"


def write_summary(run_dir: Path, summary: dict[str, Any], json_path: Path | None = None) -> None:
    """A bench's ``summary.json`` in its run folder, a copy at ``--json`` if given, and the ``results:`` line."""
    text = json.dumps(summary, indent=2, default=str)
    (run_dir / "summary.json").write_text(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    print(f"results: {run_dir}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    ps: psutil.Process
    cpu0: float = 0.0
    io0: tuple[int, int] = (0, 0)
    wait0: float | None = 0.0  # a process started after ``mark_cpu`` had waited 0 s then

    def io_calls(self) -> tuple[int, int]:
        """Read and write system calls so far (Linux /proc/PID/io syscr, syscw), or (0, 0)."""
        return bench_floor.io_calls(self.ps)

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return float("nan")


#: (role, pid) of every process any ``Fleet`` of this run spawned, in order: ``summary.json``'s ``pids``
#: (``python -m aicp.lab.bench.sched_trace`` tells the roles apart by them).
SPAWNED: list[tuple[str, int]] = []


@dataclass
class Fleet:
    """Every process a trial started, so all of them are stopped whatever happens."""

    run_dir: Path
    procs: list[Proc] = field(default_factory=list)
    #: CPUs (taskset list) by role, "*" for every other role; empty: no pinning. See ``cpu_plan``.
    cpus: dict[str, str] = field(default_factory=dict)
    #: The run's machine-noise meter: each trial on this fleet records the steal and stalls during it.
    noise: bench_noise.NoiseMeter | None = None
    #: Put before each log file's name, so that fleets alive at the same time keep their logs apart.
    log_prefix: str = ""

    def spawn(self, role: str, args: list[str], program: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
        """Start ``program`` (default: this Python) with ``args``; its output goes to ``<role>-<n>.log`` (pinned with taskset if asked).

        ``env``: variables set on top of this process's environment; with ``cwd`` (``python -m`` puts it first on
        ``sys.path``) and ``PYTHONPATH``, another source tree runs."""
        pinned = self.cpus.get(role, self.cpus.get("*"))
        with open(self.run_dir / f"{self.log_prefix}{role}-{len(self.procs)}.log", "wb") as log:  # the child keeps its own descriptor
            env = {**os.environ, "AICP_KEY_DIR": str((self.run_dir / "keys").resolve()), **(env or {})}  # keep agents' keys out of ~/.aicp
            popen = subprocess.Popen([*(["taskset", "-c", pinned] if pinned else []), program or sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, cwd=cwd)
        proc = Proc(role, popen, psutil.Process(popen.pid))
        self.procs.append(proc)
        SPAWNED.append((self.log_prefix + role, popen.pid))
        return proc

    def mark_cpu(self) -> None:
        for p in self.procs:
            p.cpu0 = p.cpu_s()
            p.io0 = p.io_calls()
            p.wait0 = bench_noise.runq_wait_s(p.popen.pid)

    def mark_noise(self) -> bench_noise.Mark | None:
        """The start of a trial's noise window (None without a meter), with the CPU of each of the fleet's processes then."""
        if self.noise is None:
            return None
        mark = self.noise.mark()
        mark.fleet_cpu0 = {p.popen.pid: p.cpu_s() for p in self.procs if p.popen.poll() is None}
        return mark

    def noise_since(self, mark: bench_noise.Mark | None) -> dict[str, Any] | None:
        """Steal, stalls and other processes' CPU since ``mark`` (``NoiseMeter.since``); None without a meter.

        The fleet's CPU in the window: what its running processes used since the mark (0 at the mark for one started
        after it); a process already reaped (a finished load generator) counts in the bench's own CPU (``getrusage``).
        """
        if self.noise is None or mark is None:
            return None
        fleet = 0.0
        for p in self.procs:
            if p.popen.poll() is None and (used := p.cpu_s() - mark.fleet_cpu0.get(p.popen.pid, 0.0)) == used:  # nan: just gone
                fleet += used
        return self.noise.since(mark, fleet_cpu_s=fleet)

    def cpu_by_role(self, wall_s: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for p in self.procs:
            used = p.cpu_s() - p.cpu0
            row = out.setdefault(p.role, {"processes": 0, "cpu_s": 0.0})
            row["processes"] += 1
            row["cpu_s"] += used
            reads, writes = p.io_calls()
            row["read_calls"] = row.get("read_calls", 0) + reads - p.io0[0]
            row["write_calls"] = row.get("write_calls", 0) + writes - p.io0[1]
            wait = bench_noise.runq_wait_s(p.popen.pid)
            if wait is not None and p.wait0 is not None:  # time ready to run but kept off a CPU
                row["runq_wait_s"] = row.get("runq_wait_s", 0.0) + wait - p.wait0
        for row in out.values():
            row["cpu_percent_of_one_core"] = 100.0 * row["cpu_s"] / wall_s if wall_s > 0 else float("nan")
            row["wall_s"] = wall_s
        return out

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait(timeout=5)
        self.procs.clear()


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def active_agents(http: str) -> int:
    """Active agents as the router's ``/healthz`` counts them (cheap, unlike listing ``/agents``)."""
    with urllib.request.urlopen(http + "/healthz", timeout=5) as resp:
        data = json.loads(resp.read())
    return int(data.get("agents", {}).get("active", 0))


def _agents_ready(http: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            seen = active_agents(http)
            if seen >= want:
                return
        time.sleep(0.1)
    raise RuntimeError(f"only {seen} of {want} agents registered after {timeout:g} s")


def own_fleet_flags(agents: int) -> list[str]:
    """Router flags for a router that serves only this bench's own loopback processes.

    The default per-address connect rate (50/s, burst 200) protects a public router
    from one address opening connections in a storm; here every agent comes from
    127.0.0.1 on purpose, so the limit would only measure itself. Connections are
    sized for the fleet plus load generators.
    """
    return ["--connect-rate", "1000000", "--connect-burst", "1000000", "--max-connections", str(max(10_000, agents + 1_000))]


def registration_timeout(agents: int) -> float:
    """How long to wait for ``agents`` to register: 30 s, plus 10 ms per agent past 1,000 (generous on 2 cores)."""
    return 30.0 + 0.01 * max(0, agents - 1_000)


@dataclass
class Trial:
    mode: str  # "open" | "closed"
    rate: float = 0.0
    concurrency: int = 0
    duration: float = 5.0
    warmup: float = 1.0


def start_system(fleet: Fleet, target: str, cfg: argparse.Namespace) -> str:
    """Start a router (or the baseline relay) and the agents; return its ws:// URL."""
    port = free_port()
    if target in RELAYS:
        fleet.spawn("relay", ["-m", RELAYS[target], "--port", str(port)])
    else:
        state = ["--state", str(fleet.run_dir / f"router-state-{port}.db")] if getattr(cfg, "state", False) else []  # a fresh file per router
        if state and getattr(cfg, "state_jetstream", False):  # a fresh nats-server -js per router instead, in the fleet (its CPU is role "nats")
            from aicp.live.store_jetstream import nats_server_binary

            nats_port = free_port()
            fleet.spawn("nats", ["-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", str(fleet.run_dir / f"jetstream-{port}")], program=nats_server_binary())
            _wait_port(nats_port, 15)
            state = ["--state", f"nats://127.0.0.1:{nats_port}", "--key", str(fleet.run_dir / f"router-{port}.key")]
        fleet.spawn("router", ["-m", "aicp.server", "--port", str(port), "--strategy", cfg.strategy, "--verify", cfg.verify,
                               "--log-level", "WARNING", "--rate", "1000000", *own_fleet_flags(cfg.agents), *state, *router_speed_flags(cfg),
                               *(["--record", str(cfg.record)] if getattr(cfg, "record", None) else [])])
    _wait_port(port, 15)
    url = f"ws://127.0.0.1:{port}"
    start_agents(fleet, url, cfg)
    if target in RELAYS:
        time.sleep(1.0 + 0.02 * cfg.agents)  # the relay has no /agents; give agents time to register
    else:
        _agents_ready(f"http://127.0.0.1:{port}", cfg.agents, registration_timeout(cfg.agents))
    return url


#: Baseline relays by bench target name: the same work per frame on each WebSocket library.
RELAYS = {"relay": "aicp.lab.bench.relay", "relay_picows": "aicp.lab.bench.relay_picows"}


def bench_targets(cfg: argparse.Namespace) -> list[str]:
    """The router, then with ``--baseline`` the relay on each of ``--relay-transports``."""
    if not cfg.baseline:
        return ["router"]
    names = {"websockets": "relay", "picows": "relay_picows"}
    return ["router", *(names[t] for t in cfg.relay_transports.split(","))]


#: A slice of the alternating baseline gets at least this warm-up (its load generator is a new process).
MIN_SLICE_WARMUP_S = 0.5


def merge_cpu(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The CPU of equal-length slices together: seconds and calls add up, the share of a core is their mean."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        for role, v in row["cpu"].items():
            m = out.setdefault(role, {"processes": 0, "cpu_s": 0.0, "read_calls": 0, "write_calls": 0, "cpu_percent_of_one_core": 0.0})
            m["processes"] = max(m["processes"], v.get("processes", 1))
            for k in ("cpu_s", "read_calls", "write_calls", *(x for x in ("runq_wait_s", "wall_s") if x in v)):
                m[k] = m.get(k, 0) + v.get(k, 0)
            m["cpu_percent_of_one_core"] += v["cpu_percent_of_one_core"] / len(rows)
    return out


def pool_slices(run_dir: Path, tags: list[str], piece: Trial, slices: list[dict[str, Any]], loadgens: int, total_s: float) -> dict[str, Any]:
    """Equal slices (``piece`` each, run under ``tags``) summarised as one trial of ``total_s`` measured seconds: every
    raw sample pooled, CPU added up, throughput over the measured time of all slices, noise merged."""
    outs = [run_dir / f"{tag}-gen{i}.npz" for tag in tags for i in range(loadgens)]
    cpu = merge_cpu(slices)
    pooled = summarise(outs, piece, cpu)
    if "loadgen" in cpu:  # summarise divides the generators' CPU of every slice by one slice's wall time
        pooled["cpu"]["loadgen"]["cpu_percent_of_one_core"] = cpu["loadgen"]["cpu_percent_of_one_core"]
    pooled["duration_s"] = total_s
    pooled["throughput_per_s"] = pooled["throughput_per_s"] * piece.duration / total_s
    pooled["slices"] = len(slices)
    pooled["noise"] = bench_noise.merge_noise([s.get("noise") or {} for s in slices])
    return pooled


def baseline_rounds(systems: dict[str, tuple[Fleet, str]], trial: Trial, cfg: argparse.Namespace) -> dict[str, Any]:
    """The main trial as ``cfg.baseline_rounds`` rounds of one slice per system (router first in ``systems``), the order
    rotating each round (router relay, relay router, ...), ``trial.duration`` split among the rounds.

    On a shared machine the speed drifts over a minute; run one after the other, the router and the
    relay each met a different machine. The ratio judged is the median of the rounds' own ratios, each
    between two slices seconds apart; the ratio of the pooled throughputs is kept next to it.
    """
    rounds = max(1, int(cfg.baseline_rounds))
    piece = Trial(trial.mode, rate=trial.rate, concurrency=trial.concurrency, duration=trial.duration / rounds,
                  warmup=max(MIN_SLICE_WARMUP_S, trial.warmup / rounds))
    names = list(systems)
    slices: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    tags: dict[str, list[str]] = {n: [] for n in names}
    print(f"baseline: {rounds} round(s) of {len(names)} slices ({piece.duration:.2f} s measured after {piece.warmup:g} s warm-up each), "
          "the order rotating each round, so a drift of the machine's speed hits the router and the relay alike", flush=True)
    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        for name in order:
            fleet, url = systems[name]
            tag = f"{name}-main-r{r}"
            slices[name].append(run_trial(fleet, url, piece, cfg, tag))
            tags[name].append(tag)
        row: dict[str, Any] = {"order": order}
        for name in names:
            s = slices[name][r]
            row[name] = {"throughput_per_s": s["throughput_per_s"], "p50_ms": s["latency_ms"]["p50"], "p99_ms": s["latency_ms"]["p99"],
                         "completed": s["completed"], "lost": s["lost"], "noise": {k: v for k, v in (s.get("noise") or {}).items() if k != "stall_list"}}
        for name in names[1:]:
            other = slices[name][r]["throughput_per_s"]
            row[f"router_over_{name}"] = slices[names[0]][r]["throughput_per_s"] / other if other else float("nan")
        rows.append(row)
        cells = "  ".join(f"{n} {slices[n][r]['throughput_per_s']:6.0f}/s" for n in names)
        ratios = "  ".join(f"router/{n} {row[f'router_over_{n}']:.2f}" for n in names[1:])
        print(f"  round {r + 1} ({' '.join(order)}): {cells}  {ratios}  machine[{bench_noise.format_noise(slices[names[0]][r].get('noise'))}]", flush=True)
    out: dict[str, Any] = {"rounds": rows, "slice": {"duration_s": piece.duration, "warmup_s": piece.warmup}}
    for name in names:
        out[name] = pool_slices(systems[name][0].run_dir, tags[name], piece, slices[name], cfg.loadgens, trial.duration)
    for name in names[1:]:
        per_round = [row[f"router_over_{name}"] for row in rows]
        out[f"router_over_{name}_rounds"] = per_round
        out[f"router_over_{name}_median"] = statistics.median(per_round)
        pooled = out[name]["throughput_per_s"]
        out[f"router_over_{name}_pooled"] = out[names[0]]["throughput_per_s"] / pooled if pooled else float("nan")
    return out


def sweep(fleet: Fleet, url: str, target: str, cfg: argparse.Namespace, summary: dict[str, Any]) -> None:
    """Step open-loop load up ``cfg.sweep_rates`` until saturated; the curve goes in ``summary`` and ``<target>-curve.csv``."""
    curve = []
    for rate in [float(x) for x in cfg.sweep_rates.split(",")]:
        r = run_trial(fleet, url, Trial("open", rate=rate, duration=cfg.duration, warmup=cfg.warmup), cfg, f"{target}-sweep-{int(rate)}")
        curve.append(r)
        print(format_result(target, r), flush=True)
        if r["throughput_per_s"] < 0.9 * rate or r["latency_ms"]["p99"] > 1000.0:
            break  # saturated
    summary[f"{target}_sweep"] = curve
    write_curve(fleet.run_dir / f"{target}-curve.csv", curve)


def run_half_capacity(fleet: Fleet, url: str, saturated: dict[str, Any], cfg: argparse.Namespace) -> dict[str, Any]:
    """Open loop at half the throughput the closed-loop trial just measured: the latency at a sane load."""
    rate = round(0.5 * saturated["throughput_per_s"])
    return run_trial(fleet, url, Trial("open", rate=float(rate), duration=cfg.duration, warmup=cfg.warmup), cfg, "router-half")


def router_speed_flags(cfg: argparse.Namespace) -> list[str]:
    """Router flags for ``--verify-threads``."""
    threads = getattr(cfg, "verify_threads", 0)
    return ["--verify-threads", str(threads)] if threads else []


def cpu_plan(router_cpus: str | None, others_cpus: str | None = None) -> dict[str, str]:
    """Pin the router (and the relay) to ``router_cpus`` and every other process to ``others_cpus``.

    Without ``others_cpus`` the others get the CPUs the router does not have, or all of
    them when the router has every CPU. Lists are taskset's (``0``, ``0,1``, ``0-3``).
    """
    if not router_cpus:
        return {}
    mine = _cpu_set(router_cpus)
    everything = sorted(os.sched_getaffinity(0))
    rest = [c for c in everything if c not in mine] or everything
    others = others_cpus or ",".join(map(str, rest))
    return {"router": router_cpus, "relay": router_cpus, "*": others}


def _cpu_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def start_agents(fleet: Fleet, url: str, cfg: argparse.Namespace, extra: tuple[str, ...] = ()) -> None:
    """Spread ``cfg.agents`` synthetic agents over ``cfg.agent_procs`` processes (returns at once)."""
    for base_id, count, first in agent_groups(cfg.agents, cfg.agent_procs):
        # seeded: agent k of the fleet (across processes) draws its service times from agent_seed + k
        seed = [] if getattr(cfg, "agent_seed", None) is None else ["--seed", str(cfg.agent_seed + first)]
        queued = [] if getattr(cfg, "agent_max_queued", None) is None else ["--max-queued", str(cfg.agent_max_queued)]
        # a lognormal's shape (aicp calibrate's grid passes the scenario's; the agents' default is 0.5)
        sigma = sigma_flags(cfg)
        fleet.spawn("agents", ["-m", "aicp", "agent", "--url", url, "--capability", METHOD, "--handler", "synthetic", "--count", str(count),
                               "--id", base_id, "--service-time", cfg.service_time, "--concurrency", str(cfg.agent_concurrency),
                               "--log-level", "WARNING", *seed, *queued, *sigma, *extra])


def sigma_flags(cfg: argparse.Namespace) -> list[str]:
    """``aicp agent``'s ``--service-sigma`` for ``cfg.agent_sigma`` (``aicp bench --service-sigma``; the grid passes a scenario's), if set."""
    sigma = getattr(cfg, "agent_sigma", None)
    return [] if sigma is None else ["--service-sigma", repr(float(sigma))]


def check_sigma(args: argparse.Namespace) -> str:
    """Why ``--service-sigma`` cannot go with the other flags, or "": it shapes a lognormal ``--service-time`` only."""
    sigma = getattr(args, "agent_sigma", None)
    if sigma is None:
        return ""
    if args.scenario is not None:
        return "--service-sigma: with --scenario, the file's lognormal sigma serves"
    if sigma < 0:
        return "--service-sigma must be at least 0"
    dist, _ = parse_service_time(args.service_time)
    if dist != "lognormal":
        return f"--service-sigma shapes a lognormal service time, not {dist} (--service-time {args.service_time})"
    return ""


def agent_groups(agents: int, agent_procs: int) -> list[tuple[str, int, int]]:
    """How ``start_agents`` spreads ``agents`` over ``agent_procs`` processes: for each process, the
    ``--id`` it gets (``bench-I``; its agents are ``bench-I-J``, or ``bench-I`` alone when it runs one,
    as ``aicp agent --count`` names them), how many agents it runs, and the fleet index of its first."""
    per_proc = max(1, agents // agent_procs)
    groups: list[tuple[str, int, int]] = []
    started = 0
    for i in range(agent_procs):
        count = per_proc if i < agent_procs - 1 else agents - started
        if count <= 0:
            break
        groups.append((f"bench-{i}", count, started))
        started += count
    return groups


def run_trial(fleet: Fleet, url: str, trial: Trial, cfg: argparse.Namespace, tag: str, loadgen: str = "aicp.lab.bench.loadgen",
              label: str = "load generator", extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Drive one load level with ``cfg.loadgens`` processes of the ``loadgen`` module (the WebSocket one by default;
    ``via_gateway`` passes the HTTP one, which takes the same arguments); merge and summarise their samples."""
    fleet.mark_cpu()
    noise0 = fleet.mark_noise()
    outs = []
    gens = []
    for i in range(cfg.loadgens):
        out = fleet.run_dir / f"{tag}-gen{i}.npz"
        outs.append(out)
        args = ["-m", loadgen, "--url", url, "--id", f"{tag}-gen{i}", "--duration", str(trial.duration), "--warmup", str(trial.warmup),
                "--seed", str(cfg.seed + i), "--out", str(out), "--task-timeout", str(cfg.task_timeout)]
        if trial.mode == "open":
            args += ["--rate", str(trial.rate / cfg.loadgens)]
        else:
            args += ["--concurrency", str(max(1, trial.concurrency // cfg.loadgens))]
        args += extra  # the load generator's own options (aicp.lab.bench.gateway_legs: the HTTP one's --connections)
        gens.append(fleet.spawn("loadgen", args))
    t0 = time.monotonic()
    limit = trial.warmup + trial.duration + cfg.task_timeout + 30.0
    for g in gens:
        g.popen.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
    wall = time.monotonic() - t0
    cpu = fleet.cpu_by_role(wall)
    machine = fleet.noise_since(noise0)
    for g in gens:
        if g.popen.returncode != 0:
            raise RuntimeError(f"{label} failed (exit {g.popen.returncode}); see {fleet.run_dir}")
    fleet.procs = [p for p in fleet.procs if p.role != "loadgen"]
    return {**summarise(outs, trial, cpu), "noise": machine}


def summarise(outs: list[Path], trial: Trial, cpu: dict[str, Any]) -> dict[str, Any]:
    intended, sent, done, outcome = [], [], [], []
    codes_total: dict[str, int] = {}
    lost = dup = verify_failures = submitted = 0
    gen_cpu = gen_wall = 0.0
    gen_io = [0, 0]
    for out in outs:
        data = np.load(out)
        meta = json.loads(Path(str(out) + ".json").read_text())
        codes = meta["codes"]
        intended.append(data["intended"])
        sent.append(data["sent"])
        done.append(data["done"])
        # map per-generator code indexes to names
        oc = data["outcome"]
        names = np.array(["lost", *codes], dtype=object)[oc.astype(np.int64) + 1]
        outcome.append(names)
        lost += meta["lost"]
        dup += meta["duplicate_outcomes"]
        verify_failures += meta["verify_failures"]
        submitted += meta["submitted"]
        gen_cpu += meta["cpu_s"]
        gen_io = [gen_io[0] + meta.get("read_calls", 0), gen_io[1] + meta.get("write_calls", 0)]
        gen_wall = max(gen_wall, meta["wall_s"])
    waited = {k: v for k, v in cpu.get("loadgen", {}).items() if k in ("runq_wait_s", "wall_s")}  # from the fleet, if it ran them
    cpu = {**cpu, "loadgen": {"processes": len(outs), "cpu_s": gen_cpu, "read_calls": gen_io[0], "write_calls": gen_io[1], "cpu_percent_of_one_core": 100.0 * gen_cpu / gen_wall if gen_wall else float("nan"), **waited}}
    t_int = np.concatenate(intended)
    t_sent = np.concatenate(sent)
    t_done = np.concatenate(done)
    names = np.concatenate(outcome)
    # open loop: from the intended send time, or the actual send when that was (slightly) earlier than intended:
    # the earlier of the two, so a late send's lag is charged and an early one is never credited
    start_t = np.minimum(t_int, t_sent) if trial.mode == "open" else t_sent
    measured = start_t >= trial.warmup
    ok = measured & (names == "ok")
    lat_ms = (t_done[ok] - start_t[ok]) * 1000.0
    window_done = ok & (t_done >= trial.warmup) & (t_done < trial.warmup + trial.duration)
    for name in names[measured]:
        if name not in ("ok", "lost"):
            codes_total[name] = codes_total.get(name, 0) + 1
    q = (lambda p: float(np.percentile(lat_ms, p))) if lat_ms.size else (lambda p: float("nan"))
    return {
        "mode": trial.mode,
        "offered_rate_per_s": trial.rate if trial.mode == "open" else None,
        "concurrency": trial.concurrency if trial.mode == "closed" else None,
        "duration_s": trial.duration,
        "warmup_s": trial.warmup,
        "throughput_per_s": float(np.sum(window_done)) / trial.duration,
        "latency_ms": {"p50": q(50), "p90": q(90), "p99": q(99), "p999": q(99.9), "max": float(lat_ms.max()) if lat_ms.size else float("nan"),
                       "mean": float(lat_ms.mean()) if lat_ms.size else float("nan"), "samples": int(lat_ms.size)},
        "submitted": submitted,
        "completed": int(np.sum(names == "ok")),
        "errors": codes_total,
        "lost": lost,
        "duplicate_outcomes": dup,
        "verify_failures": verify_failures,
        "cpu": cpu,
    }


def verdicts(main: dict[str, Any], at_1000: dict[str, Any] | None, ratio: float | None) -> list[tuple[str, bool | None, str]]:
    """PASS/FAIL rows. The design's latency claim is judged at its own load (1000/s open loop) when that
    run exists, since a closed loop's latency is set by its concurrency (Little's law)."""
    lat_run = at_1000 if at_1000 is not None else main
    where = "at 1000/s open loop" if at_1000 is not None else ("at this load" if main["mode"] == "open" else f"at concurrency {main['concurrency']}")
    lost = main["lost"] + (at_1000["lost"] if at_1000 is not None else 0)
    rows: list[tuple[str, bool | None, str]] = [
        (f"design target: p99 < 50 ms {where}", lat_run["latency_ms"]["p99"] < TARGET_P99_MS, f"p99 {lat_run['latency_ms']['p99']:.2f} ms"),
        ("design target: >= 1000 tasks/s", main["throughput_per_s"] >= TARGET_THROUGHPUT, f"{main['throughput_per_s']:.0f} tasks/s"),
        ("no task lost", lost == 0, f"lost {lost}"),
    ]
    if at_1000 is not None:
        lat = at_1000["latency_ms"]
        rows.append(("goal: p50 < 1 ms at 1000/s open loop", lat["p50"] < GOAL_P50_MS_AT_1000, f"p50 {lat['p50']:.2f} ms"))
        rows.append(("goal: p99 < 5 ms at 1000/s open loop", lat["p99"] < GOAL_P99_MS_AT_1000, f"p99 {lat['p99']:.2f} ms"))
    rows.append(("goal: >= 3000 tasks/s at saturation", main["throughput_per_s"] >= GOAL_SATURATION if main["mode"] == "closed" else None,
                 f"{main['throughput_per_s']:.0f} tasks/s" if main["mode"] == "closed" else "run closed loop to judge"))
    if ratio is not None:
        rows.append(("goal: >= 70% of the baseline relay", ratio >= GOAL_RELAY_RATIO, f"{100 * ratio:.0f}%"))
    return rows


def write_curve(path: Path, curve: list[dict[str, Any]]) -> None:
    """The latency-versus-throughput curve of a sweep, one row per offered load."""
    lines = ["offered_per_s,throughput_per_s,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,completed,lost,errors"]
    for r in curve:
        lat = r["latency_ms"]
        lines.append(f"{r['offered_rate_per_s']:.0f},{r['throughput_per_s']:.1f},{lat['p50']:.3f},{lat['p90']:.3f},{lat['p99']:.3f},"
                     f"{lat['p999']:.3f},{lat['max']:.3f},{r['completed']},{r['lost']},{sum(r['errors'].values())}")
    path.write_text("\n".join(lines) + "\n")


def format_result(name: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    load = f"offered {r['offered_rate_per_s']:.0f}/s" if r["mode"] == "open" else f"concurrency {r['concurrency']}"
    cpu = ", ".join(f"{role} {v['cpu_percent_of_one_core']:.0f}%" for role, v in r["cpu"].items())
    waits = {role: 1e3 * v["runq_wait_s"] / v["wall_s"] for role, v in r["cpu"].items() if "runq_wait_s" in v and v.get("wall_s")}
    if waits:  # the processes of a role together: 2 agent processes can wait up to 2000 ms a second
        cpu += "; waiting for a CPU " + ", ".join(f"{role} {w:.0f} ms/s" for role, w in waits.items())
    return (f"{name:8} {r['mode']:6} {load:22} throughput {r['throughput_per_s']:8.0f}/s  p50 {lat['p50']:7.2f}  p90 {lat['p90']:7.2f}  "
            f"p99 {lat['p99']:7.2f}  p99.9 {lat['p999']:7.2f}  max {lat['max']:7.2f} ms  completed {r['completed']}  errors {r['errors'] or 0}  "
            f"lost {r['lost']}  cpu[{cpu}]" + (f"  machine[{bench_noise.format_noise(r['noise'])}]" if r.get("noise") else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--url", default=None, help="benchmark a router that is already running (its agents must serve bench.synthetic)")
    add("--agents", type=int, default=8, help="agents (default 8)")
    add("--agent-procs", type=int, default=2, help="processes the agents are spread over (default 2)")
    add("--agent-concurrency", type=int, default=64, help="tasks each agent runs at once (default 64)")
    add("--service-time", default="constant:0", help="synthetic service time [DIST:]MS (default constant:0)")
    add("--service-sigma", dest="agent_sigma", type=float, default=None, metavar="S", help="a lognormal --service-time's sigma "
        "(aicp agent --service-sigma; default 0.5, the agents' default); refused with another distribution")
    add("--agent-seed", type=int, default=None, help="seed the agents' service draws (agent k: SEED + k), so that two runs draw the same "
        "service times (default: unseeded); keep it apart from --seed: the load generator draws its arrivals from --seed, and an agent "
        "seeded alike would draw its service times from the same numbers (aicp calibrate adds 100)")
    add("--agent-max-queued", type=int, default=None, metavar="N", help="tasks one agent holds before it refuses more as overloaded "
        "(default 16 x --agent-concurrency)")
    add("--loadgens", type=int, default=1, help="load-generator processes (default 1)")
    add("--rate", type=float, default=0.0, help="open loop: offered tasks/s, Poisson (default: closed loop)")
    add("--concurrency", type=int, default=64, help="closed loop: tasks in flight (default 64)")
    add("--duration", type=float, default=None, help="measured seconds (default 10; with --scenario: the file's duration_s - warmup_s)")
    add("--warmup", type=float, default=None, help="seconds before measuring (default 2; with --scenario: the file's warmup_s)")
    add("--task-timeout", type=float, default=10.0, help="each task's deadline (s)")
    add("--strategy", default=None, help="routing strategy (default round_robin; with --scenario: every strategy the file lists; with --arrivals: the recorded one)")
    add("--verify", choices=["every-hop", "edge"], default="every-hop", help="router verification policy (default every-hop)")
    add("--state", action="store_true", help="the router keeps its lasting state in an SQLite file in the run folder (aicp serve --state)")
    add("--state-jetstream", action="store_true", help="with --state or --state-overhead: in JetStream KV on a nats-server -js the bench starts, not SQLite")
    add("--baseline", action="store_true", help="also run the same load through the minimal relay and report the ratio (in alternating rounds, "
        "see --baseline-rounds)")
    add("--baseline-rounds", type=int, default=4, metavar="N", help="with --baseline: the main trial alternates N rounds of a router and a relay "
        "slice (order rotating), --duration split among them, each slice after max(0.5 s, --warmup / N); the ratio judged is the median of "
        "the rounds' ratios (default 4)")
    add("--sweep", action="store_true", help="step open-loop load up to saturation and write a latency-throughput curve")
    add("--sweep-rates", default="250,500,1000,1500,2000,3000,4000,5000,6000", help="offered rates for --sweep")
    add("--also-1000", action="store_true", help="also run 1000 tasks/s open loop to judge the latency goals")
    add("--scenario", type=Path, default=None, help="run a simulator scenario live, faithfully or not at all (every group, workload, router field, "
        "network latency, crash/recover/flap faults; its own duration and warm-up; aicp/lab/bench/scenario_plan.py)")
    add("--arrivals", type=Path, default=None, metavar="TRACE", help="open loop on the arrivals a trace recorded (aicp bench --record; docs/TRACE.md), "
        "against agents from --agents/--service-time/--agent-concurrency")
    add("--routers", type=int, default=1, help="N > 1: N routers over a real nats-server next to one router, in one run (aicp.lab.bench.cluster)")
    add("--cpu-pairs", type=int, default=3, metavar="PAIRS", help="with --routers: the router CPU part runs PAIRS pairs (local, cross-router), "
        "alternating, and judges the median of their cross/local ratios (default 3)")
    add("--cpu-duration", type=float, default=3.0, metavar="S", help="with --routers: the measured seconds of each run of those pairs (default 3)")
    add("--hop-cost", type=int, default=0, metavar="PAIRS", help="with --routers: instead, only the router CPU of a cross-router task against a "
        "local one, PAIRS runs of each, alternating, and their medians")
    add("--hop-baseline", default=None, metavar="TREE", help="with --hop-cost: in each pair, also run the pair on two routers started from this "
        "source tree (PYTHONPATH=TREE, e.g. git archive main | tar -x -C /tmp/before), beside this tree's (taking turns to go first): a before/after in one run")
    add("--via", choices=["websocket", "gateway"], default="websocket",
        help="gateway: also measure the HTTP gateway next to direct WebSocket submission (see aicp.lab.bench.via_gateway)")
    add("--gateway-rate", type=float, default=500.0, help="--via gateway: open-loop rate for the added-latency comparison (default 500)")
    add("--gateway-rounds", type=int, default=5, help="--via gateway: the open-loop comparison alternates this many rounds of a direct and a "
        "gateway slice, --duration split among them, each slice after max(0.5 s, --warmup / N); the added p50 judged is the median of "
        "the rounds' differences (default 5)")
    add("--gateway-baseline", default=None, metavar="TREE", help="--via gateway: also run a gateway from this source tree (PYTHONPATH=TREE) in "
        "each round, next to this tree's, on the same router and agents: a before/after in one run")
    add("--seed", type=int, default=1)
    add("--out", type=Path, default=Path("results") / "bench", help="parent folder of the run folder")
    add("--json", type=Path, default=None, help="also write the summary to this file")
    add("--half-capacity", action="store_true", help="after the closed-loop trial, run open loop at half its throughput (p99 goal)")
    add("--relay-transports", default="websockets", help="with --baseline: relays to run, on websockets and/or picows (default websockets)")
    add("--verify-threads", type=int, default=0, metavar="N", help="the router checks signatures on N worker threads (default 0: on its loop)")
    add("--router-cpus", default=None, metavar="LIST", help="pin the router (and the relay) with taskset to these CPUs, e.g. 0 or 0,1")
    add("--others-cpus", default=None, metavar="LIST", help="pin agents and load generators to these CPUs (default: the router's complement, or all)")
    add("--record", type=Path, default=None, metavar="FILE", help="the router records a trace of the run to FILE (docs/TRACE.md)")
    add("--record-overhead", action="store_true", help="instead: alternate routers without and with --record at --rate (default 1000/s), 3 pairs, and report the cost")
    add("--state-overhead", action="store_true", help="instead: alternate routers without and with --state at --rate (default 1000/s), 3 pairs, and report the cost")


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, a CI runner, ``kill``) leave by ``SystemExit(143)``, so the ``finally`` blocks that stop
    every spawned process run: the router, agents and gateways are started in their own sessions and, without this,
    outlived a bench killed under ``timeout`` (found running two hours later)."""
    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, leave)


def run(args: argparse.Namespace) -> int:
    exit_on_sigterm()
    why = check_sigma(args)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.scenario is not None or args.arrivals is not None:
        if (args.scenario is not None and args.arrivals is not None) or args.url or args.record_overhead or args.state_overhead or args.sweep or args.baseline:
            print("error: --scenario and --arrivals go alone (not together, nor with --url, --record-overhead, --state-overhead, --sweep or --baseline)",
                  file=sys.stderr)
            return 2
        from aicp.lab.bench.scenario_run import run as run_plan

        return run_plan(args)
    args.strategy = args.strategy or "round_robin"
    args.duration = 10.0 if args.duration is None else args.duration
    args.warmup = 2.0 if args.warmup is None else args.warmup
    if args.routers > 1:
        from aicp.lab.bench.cluster import run_cluster

        return run_cluster(args)
    if args.record_overhead or args.state_overhead:
        from aicp.lab.bench.record import record_overhead

        return record_overhead(args, feature="record" if args.record_overhead else "state")
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    main_trial = Trial("open", rate=args.rate, duration=args.duration, warmup=args.warmup) if args.rate else Trial(
        "closed", concurrency=args.concurrency, duration=args.duration, warmup=args.warmup)
    summary: dict[str, Any] = {"run_id": run_id, "version": __version__, "python": platform.python_version(), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}}
    print(f"AICP {__version__} live benchmark {run_id}: {args.agents} agents in {args.agent_procs} processes, {args.loadgens} load generator(s), "
          f"service {args.service_time}, strategy {args.strategy}, verify {args.verify}")
    status = 0
    costs = [bench_floor.signature_costs()]  # before and after the trials: the machine's quietest moments
    sampler = bench_floor.FloorSampler().start()  # and while they run
    meter = bench_noise.NoiseMeter()  # the host's steal and our stalls, over each trial and the whole run
    relays = [t for t in bench_targets(args) if t != "router"]
    try:
        fleet = Fleet(run_dir, cpus=cpu_plan(args.router_cpus, args.others_cpus), noise=meter)
        try:
            url = args.url or start_system(fleet, "router", args)
            if args.via == "gateway":
                from aicp.lab.bench import via_gateway

                summary["via_gateway"] = via_gateway.compare(fleet, url, args)
            if relays:  # the router and every relay up at once, the main trial in alternating rounds
                relay_systems: dict[str, tuple[Fleet, str]] = {}
                try:
                    for target in relays:
                        relay_fleet = Fleet(run_dir, cpus=cpu_plan(args.router_cpus, args.others_cpus), noise=meter, log_prefix=f"{target}.")
                        relay_systems[target] = (relay_fleet, "")
                        relay_systems[target] = (relay_fleet, start_system(relay_fleet, target, args))
                    based = baseline_rounds({"router": (fleet, url), **relay_systems}, main_trial, args)
                    for target in ["router", *relays]:
                        summary[target] = based.pop(target)
                        print(format_result(target, summary[target]) + "  (all rounds)", flush=True)
                    summary["baseline"] = based
                    if args.sweep:
                        for target in relays:
                            sweep(*relay_systems[target], target, args, summary)
                finally:
                    for relay_fleet, _ in relay_systems.values():
                        relay_fleet.stop()
                result = summary["router"]
            else:
                result = run_trial(fleet, url, main_trial, args, "router-main")
                summary["router"] = result
                print(format_result("router", result), flush=True)
            if args.half_capacity and result["mode"] == "closed" and result["throughput_per_s"] > 0:
                with sampler.quiet():  # a latency trial: nothing else of ours takes a core meanwhile
                    half = run_half_capacity(fleet, url, result, args)
                summary["router_at_half"] = half
                print(format_result("router", half), flush=True)
            if args.also_1000:
                with sampler.quiet():
                    r1000 = run_trial(fleet, url, Trial("open", rate=1000.0, duration=args.duration, warmup=args.warmup), args, "router-1000")
                summary["router_at_1000"] = r1000
                print(format_result("router", r1000), flush=True)
            if args.sweep:
                sweep(fleet, url, "router", args, summary)
        finally:
            fleet.stop()
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {summary['error']}", file=sys.stderr)
        status = 1
    during = sampler.stop()
    summary["noise"] = meter.stop()
    costs.append(bench_floor.signature_costs())
    for line in bench_floor.annotate_summary(summary, bench_floor.merge_costs(*costs), args.verify, during) + bench_floor.compare_relays(summary):
        print(line)
    print(f"machine over the whole run: {bench_noise.format_noise(summary['noise'])}"
          + ("" if summary["noise"].get("steal_share") is None else " (steal: the host ran other work on our vCPUs; stalls: a 5 ms sleep "
             "in the bench process overslept)"))
    trials_others = [t["noise"]["others_cores"] for k in ("router", "relay", "relay_picows", "router_at_half", "router_at_1000")
                     if (t := summary.get(k)) and (t.get("noise") or {}).get("others_cores") is not None]
    if note := bench_noise.autogroup_note(max(trials_others, default=None)):
        print(note)
    if "router" in summary:
        main_r = summary["router"]
        ratio = summary.get("baseline", {}).get("router_over_relay_median")
        summary["relay_ratio"] = ratio
        summary.update({k: main_r[k] for k in ("throughput_per_s", "latency_ms", "completed", "errors", "lost")})
        rows = verdicts(main_r, summary.get("router_at_1000"), ratio)
        summary["verdicts"] = [{"check": c, "pass": p, "measured": m} for c, p, m in rows]
        if ratio is not None:
            based = summary["baseline"]
            summary["relay_ratio_pooled"] = based["router_over_relay_pooled"]
            print(f"router / relay throughput: {ratio:.2f} (median of {len(based['rounds'])} rounds: "
                  + " ".join(f"{x:.2f}" for x in based["router_over_relay_rounds"]) + f"; all rounds pooled {based['router_over_relay_pooled']:.2f})")
        goal_rows = bench_floor.goals(summary)
        summary["goals"] = [{"check": c, "pass": p, "measured": m} for c, p, m in goal_rows]
        for check, ok, measured in rows + goal_rows:
            print(f"  {'n/a ' if ok is None else ('PASS' if ok else 'FAIL')}  {check:48} {measured}")
        trials = [summary[k] for k in ("router", "relay", "relay_picows", "router_at_1000", "router_at_half") if k in summary]
        trials += summary.get("router_sweep", []) + summary.get("relay_sweep", [])
        summary["lost_all_trials"] = sum(t["lost"] for t in trials)
        if summary["lost_all_trials"]:
            print(f"LOST TASKS: {summary['lost_all_trials']} across all trials", file=sys.stderr)
            status = 1
    summary["pids"] = {"bench": [os.getpid()]}
    for role, pid in SPAWNED:
        summary["pids"].setdefault(role, []).append(pid)
    write_summary(run_dir, summary, args.json)
    return status
