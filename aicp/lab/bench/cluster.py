"""``aicp bench --routers N``: several routers over a real nats-server, next to one router, in one run.

Three parts, every process started here and stopped at the end (docs/CLUSTER.md):

1. **one router** holding every agent; ``N`` load generators send to it, open loop at
   ``--rate`` (default 70% of the agents' capacity, from ``--service-time``);
2. **N routers** with the same agents spread unevenly (router i gets a share
   proportional to N - i, so 3 routers get 3:2:1), one load generator per router at
   ``rate / N``: throughput, p50/p99, and the cross-router share (tasks forwarded /
   tasks submitted, from each router's ``/healthz``);
3. **router CPU per task, local against cross-router**: two routers, every agent at
   the first; the same load is sent to the first (every task local), then to the
   second (every task crosses: both routers' CPU counts). The ratio is the cost of a hop.
   Both routers' CPU counts in both runs, less what they use idle (summaries and
   keep-alives are a fixed cost, paid with or without tasks; shown as "idle CPU").
   ``--cpu-pairs`` such pairs (default 3) of ``--cpu-duration`` s each, the order of each
   pair alternating (local then cross, cross then local, ...) on the same routers; each pair is printed and the
   ratio judged is their median (one pair of 5 s runs spread 1.49-1.68x between two
   identical runs on an idle machine). The table's two rows are the median pair's.
   ``--hop-cost PAIRS`` runs this part alone, PAIRS times alternating, and reports medians.

Wake-ups: besides CPU and read/write calls, each router's wake-ups per task are printed
(the times its threads went to sleep, ``voluntary_ctxt_switches`` in ``/proc/PID/task/*/status``,
less its idle rate, which is printed too): a frame that costs a wake-up of its own shows there.

The goals (issue 14): cross/local router CPU per task < 1.5; least_loaded's p99 on N
routers within 20% of one router. Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from aicp.lab.bench import noise as bench_noise
from aicp.lab.bench import wakeup
from aicp.lab.bench.live import (
    METHOD,
    Fleet,
    Proc,
    Trial,
    _agents_ready,
    _wait_port,
    free_port,
    own_fleet_flags,
    sigma_flags,
    summarise,
    write_summary,
)
from aicp.live.handlers import parse_service_time

GOAL_CPU_RATIO = 1.5
GOAL_P99_RATIO = 1.2
#: seconds of idle CPU measured before each load, to take the fixed cost out of the per-task figure
IDLE_S = 2.0
#: the same before each run of part 3's pairs (schedstat counts nanoseconds, so 1 s reads the routers' idle 1-2% well enough)
PAIR_IDLE_S = 1.0


def start_nats(fleet: Fleet) -> str:
    from aicp.live.store_jetstream import nats_server_binary

    port = free_port()
    log = open(fleet.run_dir / "nats-server.log", "wb")  # the child keeps its own descriptor
    popen = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    fleet.procs.append(Proc("nats", popen, psutil.Process(popen.pid)))
    _wait_port(port, 15)
    return f"nats://127.0.0.1:{port}"


def start_router(fleet: Fleet, cfg: argparse.Namespace, role: str, nats: str | None = None, name: str = "router", tree: str | None = None) -> tuple[str, str]:
    """A router process (in the cluster at ``nats`` if given; from source tree ``tree`` if given); returns its (ws, http) URLs."""
    port = free_port()
    cluster = ["--cluster", nats, "--router-id", name] if nats else []
    source = Path(tree).resolve() if tree else None
    fleet.spawn(role, ["-m", "aicp.server", "--port", str(port), "--strategy", cfg.strategy, "--verify", cfg.verify, "--log-level", "WARNING",
                       "--rate", "1000000", *own_fleet_flags(cfg.agents), *cluster],
                env={"PYTHONPATH": str(source)} if source else None, cwd=source)
    _wait_port(port, 15)
    return f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"


def start_agents_at(fleet: Fleet, url: str, count: int, cfg: argparse.Namespace, tag: str) -> None:
    if count > 0:
        fleet.spawn("agents", ["-m", "aicp", "agent", "--url", url, "--capability", METHOD, "--handler", "synthetic", "--count", str(count),
                               "--id", f"bench-{tag}", "--service-time", cfg.service_time, "--concurrency", str(cfg.agent_concurrency),
                               "--log-level", "WARNING", *sigma_flags(cfg)])


def healthz(http: str) -> dict[str, Any]:
    with urllib.request.urlopen(http + "/healthz", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def wait_cluster(https: list[str], timeout: float = 20.0) -> None:
    """Until every router hears every other one."""
    deadline = time.monotonic() + timeout
    want = len(https) - 1
    while time.monotonic() < deadline:
        if all(len(healthz(h).get("cluster", {}).get("routers", [])) >= want for h in https):
            return
        time.sleep(0.1)
    raise RuntimeError("the routers did not all see each other")


def uneven_split(total: int, routers: int) -> list[int]:
    """``total`` agents over ``routers`` routers in proportion N : N-1 : … : 1, at least one each."""
    weights = list(range(routers, 0, -1))
    counts = [max(1, total * w // sum(weights)) for w in weights]
    counts[0] += total - sum(counts)
    return counts


def process_cpu_s(proc: Proc) -> float:
    """CPU seconds ``proc`` has used, to the nanosecond: the sum of its threads' ``/proc/PID/task/TID/schedstat``.

    psutil's ``cpu_times`` counts in clock ticks (10 ms): over a 2 s idle window a router's
    0.01-0.02 s is one or two ticks, and the idle subtraction moved the per-task figure by
    several percent from run to run. Falls back to psutil where schedstat is missing.
    """
    try:
        return wakeup.thread_cpu_s(proc.popen.pid)
    except (OSError, ValueError, IndexError):
        return proc.cpu_s()


def process_wakeups(proc: Proc) -> int:
    """Times the threads of ``proc`` went to sleep so far (``voluntary_ctxt_switches`` of ``/proc/PID/task/*/status``):
    each is one wake-up later; preemptions by other work are not counted. 0 where the kernel does not say."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{proc.popen.pid}/task"):
            with open(f"/proc/{proc.popen.pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _by_role(fleet: Fleet, roles: tuple[str, ...], read: Callable[[Any], float]) -> dict[str, float]:
    """``read`` of each process whose role is in ``roles``, summed by role."""
    out: dict[str, float] = {}
    for p in fleet.procs:
        if p.role in roles:
            out[p.role] = out.get(p.role, 0) + read(p)
    return out


def roles_cpu_s(fleet: Fleet, roles: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds so far of each process whose role is in ``roles`` (``process_cpu_s``), summed by role."""
    return _by_role(fleet, roles, process_cpu_s)


def roles_wakeups(fleet: Fleet, roles: tuple[str, ...]) -> dict[str, float]:
    """Wake-ups so far of each process whose role is in ``roles`` (``process_wakeups``), summed by role."""
    return _by_role(fleet, roles, process_wakeups)


def idle_usage(fleet: Fleet, roles: tuple[str, ...], seconds: float = IDLE_S) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds and wake-ups per second each role in ``roles`` has with no task running (summaries, pings, timers)."""
    before, wake0 = roles_cpu_s(fleet, roles), roles_wakeups(fleet, roles)
    t0 = time.monotonic()
    time.sleep(seconds)
    after, wake1 = roles_cpu_s(fleet, roles), roles_wakeups(fleet, roles)
    wall = time.monotonic() - t0
    return {r: (after[r] - before[r]) / wall for r in after}, {r: (wake1[r] - wake0[r]) / wall for r in wake1}


def load(fleet: Fleet, targets: list[tuple[str, float]], trial: Trial, cfg: argparse.Namespace, tag: str, roles: tuple[str, ...],
         idle_s: float = IDLE_S) -> dict[str, Any]:
    """One open-loop load generator per (url, rate); CPU of the processes whose role is in ``roles``.

    ``router_cpu_ms_per_task`` is their CPU over the run, less what they use idle over as long (measured
    just before: a cluster's summaries and keep-alives cost the same with or without tasks, so they are
    a fixed cost, not a per-task one), over every task sent (warm-up included: its CPU is in the run).
    ``router_cpu_ms_per_task_gross`` keeps the idle cost in. ``idle_s``: how long the idle CPU is measured.
    """
    idle, idle_wake = idle_usage(fleet, roles, idle_s)
    fleet.mark_cpu()
    noise0 = fleet.mark_noise()
    cpu0, wake0 = roles_cpu_s(fleet, roles), roles_wakeups(fleet, roles)
    outs, gens = [], []
    for i, (url, rate) in enumerate(targets):
        out = fleet.run_dir / f"{tag}-gen{i}.npz"
        outs.append(out)
        gens.append(fleet.spawn("loadgen", ["-m", "aicp.lab.bench.loadgen", "--url", url, "--id", f"{tag}-gen{i}", "--duration", str(trial.duration),
                                            "--warmup", str(trial.warmup), "--seed", str(cfg.seed + i), "--out", str(out),
                                            "--task-timeout", str(cfg.task_timeout), "--rate", str(rate)]))
    t0 = time.monotonic()
    for g in gens:
        g.popen.wait(timeout=max(1.0, trial.warmup + trial.duration + cfg.task_timeout + 30.0 - (time.monotonic() - t0)))
    cpu1, wake1 = roles_cpu_s(fleet, roles), roles_wakeups(fleet, roles)
    wall = time.monotonic() - t0
    cpu = fleet.cpu_by_role(wall)
    machine = fleet.noise_since(noise0)
    for g in gens:
        if g.popen.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {g.popen.returncode}); see {fleet.run_dir}")
    fleet.procs = [p for p in fleet.procs if p.role != "loadgen"]
    result = summarise(outs, trial, cpu)
    result["noise"] = machine
    tasks = result["submitted"]
    used = {r: cpu1[r] - cpu0[r] for r in cpu1}
    net = {r: max(0.0, used[r] - idle.get(r, 0.0) * wall) for r in used}
    result["router_idle_cpu_percent"] = 100.0 * sum(idle.values())
    result["router_cpu_ms_per_task_gross"] = 1000.0 * sum(used.values()) / tasks if tasks else float("nan")
    result["router_cpu_ms_per_task"] = 1000.0 * sum(net.values()) / tasks if tasks else float("nan")
    wakes = {r: wake1[r] - wake0[r] - idle_wake.get(r, 0.0) * wall for r in wake1}
    #: per router: net CPU ms per task, read/write system calls per task (from /proc/PID/io), net wake-ups per task (schedstat)
    result["by_router"] = {r: {"cpu_ms_per_task": 1000.0 * net[r] / tasks if tasks else float("nan"),
                               "reads_per_task": cpu[r].get("read_calls", 0) / tasks if tasks else float("nan"),
                               "writes_per_task": cpu[r].get("write_calls", 0) / tasks if tasks else float("nan"),
                               "wakeups_per_task": wakes.get(r, 0.0) / tasks if tasks else float("nan"),
                               "idle_wakeups_per_s": idle_wake.get(r, 0.0), "idle_cpu_percent": 100.0 * idle.get(r, 0.0)} for r in net}
    return result


def default_rate(cfg: argparse.Namespace) -> float:
    _, mean_ms = parse_service_time(cfg.service_time)
    if mean_ms <= 0:
        raise SystemExit("aicp bench --routers: give --rate, or a --service-time above 0 so that 70% of capacity is defined")
    return 0.7 * cfg.agents * cfg.agent_concurrency * 1000.0 / mean_ms


def _two_routers(fleet: Fleet, cfg: argparse.Namespace, prefix: str = "", tree: str | None = None) -> tuple[str, str]:
    """nats-server, routers ra and rb in one cluster, ``cfg.agents`` agents at ra; returns (ra, rb) ws URLs once both see them.

    ``prefix`` goes before the routers' roles (``router-a``, ``router-b``); ``tree``: the routers' source tree (default this one).
    """
    nats = start_nats(fleet)
    (url1, http1) = start_router(fleet, cfg, prefix + "router-a", nats, "ra", tree)
    (url2, http2) = start_router(fleet, cfg, prefix + "router-b", nats, "rb", tree)
    start_agents_at(fleet, url1, cfg.agents, cfg, prefix + "a")
    _agents_ready(http1, cfg.agents, 60.0)
    wait_cluster([http1, http2])
    return url1, url2


def _by_router_text(by: dict[str, dict[str, float]], kind: str) -> str:
    """router-a holds the agents; router-b is the owner of cross-router tasks (idle in the local run)."""
    names = {"router-a": "agents' router" if kind == "cross" else "router", "router-b": "owner" if kind == "cross" else "other"}
    return f"{kind}: " + ", ".join(f"{names.get(r, r)} {v['cpu_ms_per_task']:.3f} ms ({v['reads_per_task']:.1f} reads, {v['writes_per_task']:.1f} writes, "
                                   f"{v.get('wakeups_per_task', float('nan')):.1f} wake-ups; idle {v.get('idle_wakeups_per_s', float('nan')):.0f} wake-ups/s, "
                                   f"{v.get('idle_cpu_percent', float('nan')):.2f}% CPU)"
                                   for r, v in sorted(by.items()))


def _pair(fleet: Fleet, urls: tuple[str, str], trial: Trial, cfg: argparse.Namespace, tag: str, roles: tuple[str, str],
          idle_s: float = IDLE_S, cross_first: bool = False) -> dict[str, Any]:
    """A local run and a cross-router run on the routers at ``urls`` (``roles``), the local one first unless ``cross_first``:
    their CPU per task and ratio. Callers alternate the order pair by pair, so a drift of the machine, or the first run's
    colder caches, weighs on both sides alike."""
    def run(kind: str) -> dict[str, Any]:
        return load(fleet, [(urls[0 if kind == "local" else 1], trial.rate)], trial, cfg, f"{tag}{kind}", roles, idle_s)

    if cross_first:
        cross = run("cross")
        local = run("local")
    else:
        local = run("local")
        cross = run("cross")
    row: dict[str, Any] = {"local": local["router_cpu_ms_per_task"], "cross": cross["router_cpu_ms_per_task"],
                           "local_gross": local["router_cpu_ms_per_task_gross"], "cross_gross": cross["router_cpu_ms_per_task_gross"],
                           "lost": local["lost"] + cross["lost"]}
    row["ratio"], row["ratio_gross"] = row["cross"] / row["local"], row["cross_gross"] / row["local_gross"]
    prefix = roles[0][: -len("router-a")]
    row["by_router"] = {kind: {r[len(prefix):]: v for r, v in res["by_router"].items()} for kind, res in (("local", local), ("cross", cross))}
    row["noise"] = {"local": local.get("noise"), "cross": cross.get("noise")}
    row["runs"] = {"local": local, "cross": cross}
    return row


def _print_pair(name: str, row: dict[str, Any]) -> None:
    print(f"  {name}: router CPU ms/task local {row['local']:.3f}, cross {row['cross']:.3f}: {row['ratio']:.2f}x "
          f"(gross {row['local_gross']:.3f} / {row['cross_gross']:.3f}: {row['ratio_gross']:.2f}x)", flush=True)
    print(f"          {_by_router_text(row['by_router']['local'], 'local')}; {_by_router_text(row['by_router']['cross'], 'cross')}", flush=True)
    print(f"          machine: local [{bench_noise.format_noise(row['noise']['local'])}]; cross [{bench_noise.format_noise(row['noise']['cross'])}]", flush=True)


def _medians(pairs: list[dict[str, Any]]) -> dict[str, float]:
    return {"median_ratio": statistics.median(r["ratio"] for r in pairs), "median_ratio_gross": statistics.median(r["ratio_gross"] for r in pairs),
            "cross_extra_us_per_task": 1000.0 * statistics.median(r["cross"] - r["local"] for r in pairs),
            "median_local": statistics.median(r["local"] for r in pairs), "median_cross": statistics.median(r["cross"] for r in pairs)}


def cpu_summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Part 3's pairs (``_pair``) as the summary's fields: each pair (without its runs), the medians (``cpu_median_ratio``
    is judged), and as ``cpu_local``/``cpu_cross`` the runs of the median pair by ratio (the lower middle one of an even count)."""
    middle = sorted(pairs, key=lambda r: r["ratio"])[(len(pairs) - 1) // 2]
    return {"cpu_pairs": [{k: v for k, v in r.items() if k != "runs"} for r in pairs], **{"cpu_" + k: v for k, v in _medians(pairs).items()},
            "cpu_local": middle["runs"]["local"], "cpu_cross": middle["runs"]["cross"]}


def hop_cost(args: argparse.Namespace) -> int:
    """Part 3 alone, ``args.hop_cost`` times: local and cross-router on the same two routers, the order alternating; medians.

    With ``args.hop_baseline`` (a source tree), two more routers from that tree (their own nats-server and agents)
    run the same pair beside this tree's in each round, the two trees taking turns to go first: before and after in one
    run, under the same load.
    """
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-hop"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    rate = args.rate or default_rate(args)
    trial = Trial("open", rate=rate, duration=args.duration, warmup=args.warmup)
    baseline = getattr(args, "hop_baseline", None)
    print(f"aicp bench --routers --hop-cost {args.hop_cost}: 2 routers, {args.agents} agents at the first (x{args.agent_concurrency}, "
          f"service {args.service_time}), open loop {rate:.0f} tasks/s, all local and all cross-router, the order alternating pair by pair"
          + (f"; baseline routers from {baseline} beside this tree's in each round, taking turns to go first" if baseline else ""))
    pairs: list[dict[str, Any]] = []
    base_pairs: list[dict[str, Any]] = []
    meter = bench_noise.NoiseMeter()
    fleet = Fleet(run_dir, noise=meter)
    try:
        urls = _two_routers(fleet, args)
        base_urls = _two_routers(fleet, args, "base-", baseline) if baseline else None
        for i in range(args.hop_cost):
            # With a baseline, the two trees take turns going first (round 2 starts with the baseline), so an order effect falls on both.
            for base_turn in (False, True) if i % 2 == 0 else (True, False):
                if not base_turn:
                    pairs.append(_pair(fleet, urls, trial, args, f"{i}-", ("router-a", "router-b"), cross_first=i % 2 == 1))
                    _print_pair(f"pair {i + 1}" + (" (this tree)" if baseline else ""), pairs[-1])
                elif base_urls is not None:
                    base_pairs.append(_pair(fleet, base_urls, trial, args, f"{i}-base-", ("base-router-a", "base-router-b"), cross_first=i % 2 == 1))
                    _print_pair(f"pair {i + 1} (baseline)  ", base_pairs[-1])
    finally:
        fleet.stop()
    machine = meter.stop()
    # The floor under it: one loopback wake-up, read and write, at the rate a router wakes for a cross-router task's frames.
    wake = wakeup.measure(2 * rate, min(args.duration, 5.0))
    lost = sum(r["lost"] for r in pairs + base_pairs)
    summary: dict[str, Any] = {"run_id": run_id, "rate": rate, "pairs": pairs, **_medians(pairs), "lost": lost, "wakeup": wake, "noise": machine,
                               "note": "figures from one run on this machine; others may be loading it"}
    extra_us, ratio = summary["cross_extra_us_per_task"], summary["median_ratio"]
    print(f"  a cross-router task costs {extra_us:.0f} us more router CPU than a local one (median); it adds 2 wake-ups, reads and writes "
          f"(one more frame in and out at each of 2 routers): one loopback wake-up+read+write alone costs {wake['us_per_message']:.0f} us "
          f"here (uvloop echo at {2 * rate:.0f}/s, python -m aicp.lab.bench.wakeup)")
    print(f"  machine over the run: {bench_noise.format_noise(machine)}")
    if base_pairs:
        base = summary["baseline"] = {"tree": str(baseline), "pairs": base_pairs, **_medians(base_pairs)}
        paired = statistics.median(r["ratio"] / b["ratio"] for r, b in zip(pairs, base_pairs))
        summary["ratio_over_baseline_paired"] = paired
        print(f"  medians, this tree: local {summary['median_local']:.3f}, cross {summary['median_cross']:.3f} ms/task, {ratio:.2f}x; "
              f"baseline: local {base['median_local']:.3f}, cross {base['median_cross']:.3f}, {base['median_ratio']:.2f}x; "
              f"cross extra {extra_us:.0f} against {base['cross_extra_us_per_task']:.0f} us; ratio / baseline's, paired by round: {paired:.2f}")
    print(f"  {'PASS' if ratio < GOAL_CPU_RATIO else 'FAIL'}  goal: cross-router CPU/task < {GOAL_CPU_RATIO}x local, median of {len(pairs)}: {ratio:.2f}x "
          f"(gross {summary['median_ratio_gross']:.2f}x); lost {lost}")
    write_summary(run_dir, summary, args.json)
    return 0 if lost == 0 else 1


def run_cluster(args: argparse.Namespace) -> int:
    if args.hop_cost > 0:
        return hop_cost(args)
    n = args.routers
    if args.cpu_pairs < 1 or args.cpu_duration <= 0:
        raise SystemExit("aicp bench --routers: --cpu-pairs must be at least 1 and --cpu-duration above 0")
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-cluster"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    rate = args.rate or default_rate(args)
    trial = Trial("open", rate=rate, duration=args.duration, warmup=args.warmup)
    split = uneven_split(args.agents, n)
    print(f"aicp bench --routers {n}: {args.agents} agents (x{args.agent_concurrency}, service {args.service_time}), "
          f"open loop {rate:.0f} tasks/s, strategy {args.strategy}; cluster agents per router {split}")
    summary: dict[str, Any] = {"run_id": run_id, "routers": n, "rate": rate, "agents": args.agents, "split": split, "strategy": args.strategy,
                               "service_time": args.service_time, "note": "figures from one run on this machine; others may be loading it"}
    status = 0
    meter = bench_noise.NoiseMeter()
    try:
        # 1. one router with every agent
        fleet = Fleet(run_dir, noise=meter)
        try:
            url, http = start_router(fleet, args, "router")
            start_agents_at(fleet, url, args.agents, args, "single")
            _agents_ready(http, args.agents, 60.0)
            summary["single"] = load(fleet, [(url, rate / n)] * n, trial, args, "single", ("router",))
        finally:
            fleet.stop()
        # 2. n routers, agents spread unevenly
        fleet = Fleet(run_dir, noise=meter)
        try:
            nats = start_nats(fleet)
            urls = [start_router(fleet, args, "router", nats, f"r{i + 1}") for i in range(n)]
            for i, ((_, http), count) in enumerate(zip(urls, split)):
                others = [u for u, _ in urls[i:] + urls[:i]]
                start_agents_at(fleet, ",".join(others), count, args, f"r{i + 1}")
                _agents_ready(http, count, 60.0)
            wait_cluster([h for _, h in urls])
            before = [healthz(h)["cluster"] for _, h in urls]
            result = load(fleet, [(u, rate / n) for u, _ in urls], trial, args, "cluster", ("router",))
            after = [healthz(h)["cluster"] for _, h in urls]
            forwarded = sum(a["tasks_forwarded_out"] - b["tasks_forwarded_out"] for a, b in zip(after, before))
            result["cross_router_share"] = forwarded / result["submitted"] if result["submitted"] else float("nan")
            summary["cluster"] = result
        finally:
            fleet.stop()
        # 3. router CPU per task: local against cross-router, same two routers, same agents, CPU_PAIRS pairs alternating
        fleet = Fleet(run_dir, noise=meter)
        try:
            urls2 = _two_routers(fleet, args)
            pair_trial = Trial("open", rate=rate, duration=args.cpu_duration, warmup=args.warmup)
            print(f"router CPU per task, local against cross-router: {args.cpu_pairs} pairs of {args.cpu_duration:g} s runs, alternating "
                  f"(idle CPU measured {PAIR_IDLE_S:g} s before each run)", flush=True)
            pairs = []
            for i in range(args.cpu_pairs):
                pairs.append(_pair(fleet, urls2, pair_trial, args, f"cpu{i}-", ("router-a", "router-b"), PAIR_IDLE_S, cross_first=i % 2 == 1))
                _print_pair(f"pair {i + 1}" + (" (cross first)" if i % 2 == 1 else " (local first)"), pairs[-1])
            summary.update(cpu_summary(pairs))
        finally:
            fleet.stop()
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {summary['error']}")
        status = 1
    summary["noise"] = meter.stop()
    if status == 0:
        status = report(summary)
    write_summary(run_dir, summary, args.json)
    return status


def report(s: dict[str, Any]) -> int:
    single, cluster, local, cross = s["single"], s["cluster"], s["cpu_local"], s["cpu_cross"]
    print(f"{'':28} {'throughput/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'cross share':>11} {'router CPU ms/task':>18} {'(gross)':>8} {'idle CPU':>8} "
          f"{'lost':>5} {'errors':8} machine")
    rows = [("1 router, every agent", single, None), (f"{s['routers']} routers, agents {s['split']}", cluster, cluster.get("cross_router_share")),
            ("2 routers, all local*", local, 0.0), ("2 routers, all cross-router*", cross, 1.0)]
    for name, r, share in rows:
        lat = r["latency_ms"]
        share_text = "-" if share is None else f"{100 * share:.0f}%"
        print(f"{name:28} {r['throughput_per_s']:12.0f} {lat['p50']:8.2f} {lat['p99']:8.2f} {share_text:>11} {r['router_cpu_ms_per_task']:18.3f} "
              f"{r['router_cpu_ms_per_task_gross']:8.3f} {r['router_idle_cpu_percent']:7.1f}% {r['lost']:5d} {r['errors'] or ''!s:8} "
              f"{bench_noise.format_noise(r.get('noise'))}")
    # The median of the pairs' ratios (each pair: a local run and a cross-router run, both routers' CPU in each).
    cpu_ratio = s["cpu_median_ratio"]
    s["cpu_ratio_gross_cross_over_local"] = s["cpu_median_ratio_gross"]
    p99_ratio = cluster["latency_ms"]["p99"] / single["latency_ms"]["p99"]
    s["cpu_ratio_cross_over_local"] = cpu_ratio
    s["p99_ratio_cluster_over_single"] = p99_ratio
    lost = sum(r["lost"] for _, r, _ in rows) + sum(r["lost"] for r in s["cpu_pairs"]) - local["lost"] - cross["lost"]  # the pairs not in the table too
    pair_ratios = ", ".join(f"{r['ratio']:.2f}" for r in s["cpu_pairs"])
    checks = [(f"goal: cross-router CPU/task < {GOAL_CPU_RATIO}x local", cpu_ratio < GOAL_CPU_RATIO,
               f"{cpu_ratio:.2f}x (median of {len(s['cpu_pairs'])} pairs: {pair_ratios})"),
              (f"goal: {s['strategy']} p99, {s['routers']} routers within 20% of one", p99_ratio <= GOAL_P99_RATIO, f"{p99_ratio:.2f}x"),
              ("no task lost", lost == 0, f"lost {lost}")]
    s["verdicts"] = [{"check": c, "pass": p, "measured": m} for c, p, m in checks]
    for check, ok, measured in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {check:52} {measured}")
    print("  * the median pair's runs (by cross/local ratio)")
    print(f"  router CPU per task is net of the routers' idle CPU; with it left in, cross/local = {s['cpu_ratio_gross_cross_over_local']:.2f}x (median)")
    print(f"  machine over the whole run: {bench_noise.format_noise(s.get('noise'))}")
    print("  (one run on this machine; if other work loads it, the figures move)")
    return 0 if lost == 0 else 1


def main(argv: list[str] | None = None) -> int:
    from aicp.lab.bench.live import add_arguments

    parser = argparse.ArgumentParser(prog="python -m aicp.lab.bench.cluster")
    add_arguments(parser)
    return run_cluster(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

