"""``aicp calibrate``: measure the live stack's own costs, and check the simulator against live runs.

``aicp calibrate [--out FILE]`` starts a router that records a trace
(docs/TRACE.md), 8 agents whose synthetic handler sleeps a constant 1 ms, and one
load generator at 100, 400 and 1000 tasks/s in turn (agents at most ~12% busy, so
most tasks find their agent idle); each rate is a level. Then one agent, 80% busy,
for what holds a busy slot. From the traces and the load generator's samples it
takes, per task (aicp/sim/stack.py says how each is used):

* ``wake_ms``: the agent's signed ``service_ms`` minus the probe's constant service;
* ``agent_overhead_ms``: router dispatch to router result, minus ``service_ms``
  (tasks whose agent had nothing in hand);
* ``client_ms``: the load generator's latency (from the intended send time) minus
  the router's arrival-to-end time, the k-th task sent matched to the k-th arrival
  from that load generator (one connection keeps the order);
* ``slot_ms`` (one figure): the mean, over back-to-back tasks of the busy agent, of the
  time between their results minus the second's ``service_ms`` (``busy_gaps``).

It writes them as JSON; a scenario names the file with ``[calibration] file = ...``.
The figures hold for this machine *at the time of the run*: on a shared machine
rerun it right before comparing.

``aicp calibrate --grid DIR`` runs, for every scenario file in DIR (one agent group,
one Poisson workload), each of its strategies live (a fresh router per strategy, back
to back), then the simulator on the file with the stack's costs taken four ways:
``sim`` none; ``probe`` a calibration measured before the grid (``--probe``) or named
(``--calibration FILE``), if any; ``run`` the costs read from that live run's own trace
(:func:`aicp.sim.stack.costs_from_trace`: handler times, round trips of idle
dispatches, slot hand-over; plus the load generator's part; never the latency); and
``other`` the same read from the *other* strategy's live run of the workload, so that
nothing of the run predicted reaches the simulator. It prints the p50/p99 table side
by side (also ``grid.csv`` and ``grid.json`` in the run folder). So that the two runs of a
workload differ by their strategy only, each is made in ``--blocks`` parts in the order
A B B A (a drift of the machine reaches both alike), block k of every strategy draws the
same arrivals and service times (seeded agents), the agents queue without a cap as the
simulated ones do, and a run with failed or lost tasks, or whose seeded agents' handler times do not follow
their draws, is run again (``--live-retries``).

A short run's p99 is itself a noisy figure (docs/SIMULATOR.md, "How precise is a short run's
p99"): before the live runs, the grid simulates each workload a few times for 10 s to learn
how much its p99 moves between samples, and makes each live run long enough for
``--target-spread`` within a time budget (:func:`plan_durations`); after them it prints every
p99 with a 95% interval and tells a miss the intervals leave undecided (``noise``) from one
beyond them (``MISS``), :mod:`aicp.lab.calibration_noise`. ``aicp calibrate --grid-random N
--seed S`` draws the N workloads from the issue's box instead (:mod:`aicp.lab.calibration_draw`)
and writes them into the run folder.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from aicp import trace
from aicp.lab import calibration_draw
from aicp.lab import calibration_noise as noise
from aicp.lab.bench import live
from aicp.lab.bench.loadgen import poisson_gaps
from aicp.live import handlers
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


class GeneratorRun(NamedTuple):
    """One load generator's tasks as the router's trace and the generator's samples saw them, read once.

    ``order``: its task ids in arrival order; the k-th is the k-th task it sent (one connection keeps the order),
    so ``intended[k]``, ``sent[k]``, ``done[k]`` (s after the generator's start) and ``outcome[k]`` are that task's.
    ``arrive``, ``end`` (``(t, outcome)``), ``first_dispatch`` (``(t, agent)``) and ``reply`` (ok results:
    ``(t, service_ms, agent)``) are the router's, in wall-clock seconds."""

    order: list[str]
    arrive: dict[str, float]
    first_dispatch: dict[str, tuple[float, str]]
    reply: dict[str, tuple[float, float | None, str]]
    end: dict[str, tuple[float, str]]
    intended: np.ndarray
    sent: np.ndarray
    done: np.ndarray
    outcome: np.ndarray

    def completed(self, skip_s: float) -> list[tuple[int, str, float]]:
        """``(k, task, router end time)`` of each task intended at or after ``skip_s`` that both the router and the
        generator saw complete, in arrival order."""
        out = []
        for k, task in enumerate(self.order):
            e = self.end.get(task)
            if e is not None and e[1] == "completed" and self.outcome[k] == 0 and self.intended[k] >= skip_s:
                out.append((k, task, e[0]))
        return out


def read_generator_run(trace_path: Path, gen_npz: Path, requester: str) -> GeneratorRun:
    """The router's trace (one pass) and the generator ``requester``'s samples of one run; refuses a pair whose task
    counts differ (the k-th arrival would not be the k-th task sent)."""
    arrive: dict[str, float] = {}
    order: list[str] = []
    first_dispatch: dict[str, tuple[float, str]] = {}
    reply: dict[str, tuple[float, float | None, str]] = {}
    end: dict[str, tuple[float, str]] = {}
    n = len(requester)
    for ev in trace.parse(trace_path.read_bytes()):
        if isinstance(ev, trace.Arrive):
            if ev.task.startswith(requester) and ev.task[n : n + 1] in ("/", "\n"):
                arrive[ev.task] = ev.t
                order.append(ev.task)
        elif isinstance(ev, trace.Dispatch):
            if ev.attempt == 1:
                first_dispatch[ev.task] = (ev.t, ev.agent)
        elif isinstance(ev, trace.Reply):
            if ev.ok:
                reply[ev.task] = (ev.t, ev.service_ms, ev.agent)
        elif isinstance(ev, trace.End):
            end[ev.task] = (ev.t, ev.outcome)
    data = np.load(gen_npz)
    run = GeneratorRun(order, arrive, first_dispatch, reply, end, data["intended"], data["sent"], data["done"], data["outcome"])
    if len(order) != len(run.intended):
        raise RuntimeError(f"{trace_path}: {len(order)} arrivals from {requester} but the load generator sent {len(run.intended)}")
    return run


def analyse(trace_path: Path, gen_npz: Path, requester: str, concurrency: int = 1, skip_s: float = 0.5) -> dict[str, np.ndarray]:
    """Per-task figures of one load generator's tasks, from the router's trace and the generator's samples.

    ``service_ms`` (what the agents signed, every completed task), ``overhead_ms``
    (dispatch to result minus ``service_ms``, for tasks whose agent had fewer than
    ``concurrency`` tasks in hand) and ``client_ms`` (the generator's latency minus the
    router's arrival-to-end time; the k-th task sent is the k-th arrival from
    ``requester``, since one connection keeps the order).
    """
    run = read_generator_run(trace_path, gen_npz, requester)
    first_dispatch, reply, intended = run.first_dispatch, run.reply, run.intended
    measured = {task for k, task in enumerate(run.order) if intended[k] >= skip_s}
    service, overhead = [], []
    in_hand: dict[str, list[float]] = {}  # agent -> result times of its earlier dispatches (a heap)
    for task in sorted(first_dispatch, key=lambda k: first_dispatch[k][0]):
        t_d, agent = first_dispatch[task]
        got = reply.get(task)
        heap = in_hand.setdefault(agent, [])
        while heap and heap[0] < t_d:
            heapq.heappop(heap)
        idle = len(heap) < concurrency
        if got is None or got[2] != agent:
            continue
        heapq.heappush(heap, got[0])
        if task not in measured or got[1] is None:
            continue
        service.append(got[1])
        if idle:
            overhead.append((got[0] - t_d) * 1000.0 - got[1])
    client: list[float] = []
    for k, task, t_end in run.completed(skip_s):
        live_ms = (run.done[k] - min(intended[k], run.sent[k])) * 1000.0  # from the intended time; from the send if that was earlier
        client.append(live_ms - (t_end - run.arrive[task]) * 1000.0)
    return {"service_ms": np.array(service), "overhead_ms": np.array(overhead), "client_ms": np.array(client)}


def intake_track(trace_path: Path, gen_npz: Path, requester: str, skip_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The way into the router of one load generator's measured, completed tasks, in intended order: their intended
    send times (s after the warm-up), how long after that (or after the send, if earlier) each frame reached the
    router (ms: the send lag, the hop, the router's read), and the part after the router (ms: its end -> the
    generator's outcome). The two add up to ``client_ms`` of :func:`analyse`; the first, as a track in time, is what
    a stall of the generator or the router does to the arrivals (``stack.Level.intake_ms``, docs/SIMULATOR.md).
    The router's and the generator's clocks are the machine's wall clock (``start_wall`` of the samples)."""
    run = read_generator_run(trace_path, gen_npz, requester)
    start_wall = float(json.loads(Path(str(gen_npz) + ".json").read_text())["start_wall"])
    t, lag, after = [], [], []
    for k, task, t_end in run.completed(skip_s):
        start = start_wall + min(run.intended[k], run.sent[k])
        t.append(run.intended[k] - skip_s)
        lag.append((run.arrive[task] - start) * 1000.0)
        after.append((start_wall + run.done[k] - t_end) * 1000.0)
    i = np.argsort(np.array(t), kind="stable")
    return np.array(t)[i], np.array(lag)[i], np.array(after)[i]


def busy_gaps(trace_path: Path) -> np.ndarray:
    """What holds a busy agent's slot beyond its signed ``service_ms`` (ms), one figure per back-to-back pair.

    For two consecutive tasks of one agent (concurrency 1) where the second was dispatched
    before the first's result came back, the time between the two results minus the
    second's ``service_ms``: signing and sending the first result, and handing the slot
    over on the agent's event loop. Each figure carries the jitter of two result hops,
    which cancels in the mean.
    """
    dispatch: dict[str, tuple[float, str]] = {}
    reply: dict[str, tuple[float, float]] = {}
    for ev in trace.parse(trace_path.read_bytes()):
        if isinstance(ev, trace.Dispatch) and ev.attempt == 1:
            dispatch[ev.task] = (ev.t, ev.agent)
        elif isinstance(ev, trace.Reply) and ev.ok and ev.service_ms is not None:
            reply[ev.task] = (ev.t, ev.service_ms)
    by_agent: dict[str, list[tuple[float, float, float]]] = {}
    for task, (t_d, agent) in dispatch.items():
        if task in reply:
            by_agent.setdefault(agent, []).append((reply[task][0], t_d, reply[task][1]))
    gaps = []
    for rows in by_agent.values():
        rows.sort()
        for (r0, _, _), (r1, d1, s1) in itertools.pairwise(rows):
            if d1 < r0:
                gaps.append((r1 - r0) * 1000.0 - s1)
    return np.array(gaps)


def measure(args: argparse.Namespace) -> tuple[stack_mod.Calibration, Path]:
    """Run the probe at each rate on one router and fleet; return the calibration and its run folder."""
    run_dir = args.out_dir / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.probe_rates.split(",")]
    trace_path = run_dir / "probe.jsonl"
    cfg = bench_args(
        agents=args.agents,
        agent_procs=min(args.agent_procs, args.agents),
        agent_concurrency=1,
        service_time=f"constant:{args.probe_ms:g}",
        strategy="least_loaded",
        record=trace_path,
        seed=args.seed,
    )
    print(
        f"calibrate: {args.agents} agents in {cfg.agent_procs} processes, constant {args.probe_ms:g} ms, "
        f"{', '.join(f'{r:g}' for r in rates)} tasks/s for {args.duration:g} s each",
        flush=True,
    )
    fleet = live.Fleet(run_dir)
    results = []
    try:
        url = live.start_system(fleet, "router", cfg)
        for i, rate in enumerate(rates):
            results.append(
                live.run_trial(
                    fleet, url, live.Trial("open", rate=rate, duration=args.duration, warmup=1.0), cfg, f"{PROBE_ID}{i}"
                )
            )
    finally:
        fleet.stop()  # the router flushes its trace when it stops
    # a busy agent: one agent, constant service, 80% busy, so most tasks wait for the one before
    busy_trace = run_dir / "busy.jsonl"
    busy_rate = 0.8 * 1000.0 / args.busy_ms
    busy_cfg = bench_args(
        agents=1,
        agent_procs=1,
        agent_concurrency=1,
        service_time=f"constant:{args.busy_ms:g}",
        strategy="least_loaded",
        record=busy_trace,
        seed=args.seed,
    )
    fleet = live.Fleet(run_dir)
    try:
        url = live.start_system(fleet, "router", busy_cfg)
        live.run_trial(
            fleet, url, live.Trial("open", rate=busy_rate, duration=args.duration, warmup=1.0), busy_cfg, f"{PROBE_ID}-busy"
        )
    finally:
        fleet.stop()
    gaps = busy_gaps(busy_trace)
    sign_ms = sign_cost_ms()
    slot_ms = float(np.clip(gaps.mean(), 0.0, None)) if gaps.size >= 20 else sign_ms
    levels = []
    for i, rate in enumerate(rates):
        got = analyse(trace_path, run_dir / f"{PROBE_ID}{i}-gen0.npz", f"{PROBE_ID}{i}-gen0")
        lost = results[i]["lost"] + sum(results[i]["errors"].values())
        if got["overhead_ms"].size < 50 or got["client_ms"].size < 50 or lost:
            # the stack could not carry this rate here (a loaded machine): a level measured on a collapse would mislead
            print(
                f"calibrate: level {rate:g}/s dropped ({got['overhead_ms'].size} idle dispatches, {got['client_ms'].size} outcomes, "
                f"{lost} failed or lost)",
                file=sys.stderr,
            )
            continue
        levels.append(
            stack_mod.Level(
                rate_per_s=rate,
                # the probe's agents sleep its constant less their lead, rounded to the timer (stack_mod.timer_sleep)
                wake_ms=_thin(got["service_ms"] - stack_mod.timer_sleep(args.probe_ms, handlers.SLEEP_LEAD_MS, args.timer_ms)),
                agent_overhead_ms=_thin(got["overhead_ms"]),
                client_ms=_thin(got["client_ms"]),
            )
        )
    if not levels:
        raise RuntimeError("no probe rate gave enough clean samples to calibrate")
    cal = stack_mod.Calibration(
        v=stack_mod.CALIBRATION_VERSION,
        timer_ms=args.timer_ms,
        lead_ms=handlers.SLEEP_LEAD_MS,
        slot_ms=round(slot_ms, 4),
        levels=levels,
        measured={
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "probe": {
                "agents": args.agents,
                "agent_procs": cfg.agent_procs,
                "service_ms": args.probe_ms,
                "rates_per_s": rates,
                "duration_s": args.duration,
            },
            "probe_latency_ms": [r["latency_ms"] for r in results],
            "busy_probe": {
                "service_ms": args.busy_ms,
                "rate_per_s": busy_rate,
                "pairs": int(gaps.size),
                "gap_mean_ms": float(gaps.mean()) if gaps.size else None,
                "gap_p50_ms": float(np.median(gaps)) if gaps.size else None,
            },
            "sign_ms": sign_ms,
            "cpu": [r["cpu"] for r in results],
            # CPU per task by role (router, agents, load generator), for the record: the levels' costs already include
            # what sharing the cores does to them at each rate
            "cpu_ms_per_task": [
                {role: 1000.0 * v["cpu_s"] / max(1, r["submitted"]) for role, v in r["cpu"].items()} for r in results
            ],
        },
    )
    return cal, run_dir


def write(cal: stack_mod.Calibration, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(cal), indent=1))


def describe(cal: stack_mod.Calibration) -> str:
    lines = [f"timer {cal.timer_ms:g} ms, a busy agent's slot beyond its service {cal.slot_ms:.3f} ms"]
    for level in cal.levels:
        s = stack_mod.summary(level)
        lines.append(
            f"  at {level.rate_per_s:6g}/s: wake mean {s['wake_mean_ms']:.3f} (p50 {s['wake_p50_ms']:.3f}) ms; agent round trip mean "
            f"{s['agent_overhead_mean_ms']:.3f} (p50 {s['agent_overhead_p50_ms']:.3f}) ms; client mean {s['client_mean_ms']:.3f} "
            f"(p50 {s['client_p50_ms']:.3f}) ms"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the grid
def live_args_for(scenario: sc_mod.Scenario, path: Path, strategy: str, args: argparse.Namespace) -> argparse.Namespace:
    """Bench settings that reproduce a one-group, one-Poisson-workload scenario; anything else is refused."""
    if len(scenario.agents) != 1 or len(scenario.workload) != 1:
        raise SystemExit(f"{path}: the grid takes one agent group and one workload")
    group, work = scenario.agents[0], scenario.workload[0]
    if not isinstance(work.arrival, sc_mod.PoissonArrival):
        raise SystemExit(f"{path}: the grid takes Poisson arrivals")
    dist = group.service_time
    if not isinstance(dist, sc_mod.ConstantDist | sc_mod.ExponentialDist | sc_mod.LognormalDist):
        raise SystemExit(f"{path}: live agents support constant, exponential and lognormal service")
    if scenario.faults or group.fail_prob or scenario.network.loss:
        raise SystemExit(f"{path}: the grid runs no faults, failures or loss")
    tag = type(dist).__struct_config__.tag
    return bench_args(
        agents=group.count,
        agent_procs=min(args.agent_procs, group.count),
        agent_concurrency=group.concurrency,
        service_time=f"{tag}:{dist.mean_ms / group.speed:g}",
        rate=work.arrival.rate_per_s,
        strategy=strategy,
        # enough samples for a p99 (at least args.live_samples), within [live_duration, 3 x live_duration]
        duration=min(3.0 * args.live_duration, max(args.live_duration, args.live_samples / work.arrival.rate_per_s)),
        warmup=args.live_warmup,
        seed=args.seed,
        task_timeout=5.0,  # an overloaded live run (a loaded machine) ends sooner
        # the same service draws in every strategy's run, as the load generator's arrivals already are (common random
        # numbers): the "other" column then compares strategies on one realisation of the workload, not two
        agent_seed=None if getattr(args, "fresh_draws", False) else args.seed + AGENT_SEED_OFFSET,
        # the simulated agents queue without limit; live, a 16-task queue (the default) overflows in a 50 ms stall of a
        # 2.5 ms workload, and the router then fails tasks and holds the agent out: a cascade the simulator does not model
        agent_max_queued=GRID_AGENT_QUEUE,
        # a lognormal's shape, passed to the live agents (aicp agent --service-sigma)
        agent_sigma=dist.sigma if isinstance(dist, sc_mod.LognormalDist) else None,
        # the lead the live agents' sleeps take off their draws (what wake_from_run and the 'same' column round at)
        sleep_lead_ms=handlers.SLEEP_LEAD_MS,
    )


#: the grid's agent k of block b draws its service times from seed + 1000 b + AGENT_SEED_OFFSET + k, and the load
#: generator its arrivals from seed + 1000 b. With no offset (grids before this), agent 0 drew from the load
#: generator's own random.Random(seed): its k-th service time was its k-th arrival gap, scaled (correlation 0.98)
AGENT_SEED_OFFSET = 100

#: tasks one live agent of the grid may hold before refusing (aicp agent --max-queued); far above any queue a carried workload builds
GRID_AGENT_QUEUE = 4096


def overloaded(result: dict[str, Any], rate: float) -> bool:
    """The live stack did not carry the offered load: errors, lost tasks, or throughput under 90% of it."""
    return failed(result) or result["throughput_per_s"] < 0.9 * rate


def failed(result: dict[str, Any]) -> bool:
    """Some task of the live run failed or was lost: the run holds an incident (a stall, a refusal cascade), not the workload."""
    return bool(result["errors"]) or result["lost"] > 0


def run_live(cfg: argparse.Namespace, run_dir: Path, tag: str) -> dict[str, Any]:
    """One live run with a recorded trace; adds the stack's costs read from that trace (``costs``, ``client_ms``).

    The costs are the hops, slot gaps and handler times of :func:`aicp.sim.stack.costs_from_trace`
    (never the latency); ``client_ms`` is the load generator's own part of each task
    (its latency minus the router's arrive-to-end span of the same task: the send lag,
    the two hops to and from the router, the outcome's verify), outside every queue of the router.
    """
    cfg.record = run_dir / f"{tag}.jsonl"
    fleet = live.Fleet(run_dir)
    try:
        url = live.start_system(fleet, "router", cfg)
        result = live.run_trial(fleet, url, live.Trial("open", rate=cfg.rate, duration=cfg.duration, warmup=cfg.warmup), cfg, tag)
    finally:
        fleet.stop()
    result.update(read_run(cfg, run_dir, tag))
    return result


def disturbed(result: dict[str, Any], cfg: argparse.Namespace) -> str:
    """Why a live run measured an incident of the machine rather than the workload, or "" if it did not.

    Failed or lost tasks (a stall that overflowed the agents' queues, a refusal cascade), or, with
    seeded agents, handler times that do not follow their draws (:func:`wake_from_run`: more than
    ``WAKE_MISMATCH`` of the tasks woke over 2 timer ticks late, so the agents were starved of CPU
    for the whole run: the g4 round_robin run of 2026-11-28 19:19, 22.6 ms handlers for 20 ms draws).
    Both are read from the run alone, never from a prediction.
    """
    if failed(result):
        return f"{sum(result['errors'].values())} failed and {result['lost']} lost tasks"
    if cfg.agent_seed is not None:
        try:
            wake_from_run(cfg.record, cfg, cfg.agent_seed)
        except stack_mod.CalibrationError:
            return "handler times that do not follow the agents' seeded draws (agents starved of CPU)"
    return ""


def run_live_retrying(cfg: argparse.Namespace, run_dir: Path, tag: str, retries: int) -> dict[str, Any]:
    """:func:`run_live`, run again (up to ``retries`` times) while it is :func:`disturbed`; the disturbed runs' files kept
    aside, and named with the reason in the result's ``retried`` (the grid reports them in its row: every run made is told)."""
    result = run_live(cfg, run_dir, tag)
    retried: list[dict[str, str]] = []
    for attempt in range(1, retries + 1):
        why = disturbed(result, cfg)
        if not why:
            break
        keep_aside(run_dir, tag, f"failed{attempt}")
        print(f"{tag}: live run {attempt} had {why}; running it again (its files: {tag}-failed{attempt}*)", file=sys.stderr, flush=True)
        retried.append({"files": f"{tag}-failed{attempt}", "why": why})
        result = run_live(cfg, run_dir, tag)
    result["retried"] = retried
    return result


def keep_aside(run_dir: Path, tag: str, label: str) -> None:
    """Rename a live run's files ``TAG.*``, ``TAG-*`` to ``TAG-LABEL*`` (files kept aside earlier stay as they are)."""
    for f in run_dir.glob(f"{tag}[.-]*"):
        rest = f.name[len(tag) :]
        if not rest.startswith(("-failed", "-moved")):
            f.rename(f.with_name(f"{tag}-{label}{rest}"))


def pair_moved(got: dict[str, dict[str, Any]], pair: list[str], slots: int) -> str:
    """Why the two strategies' part k (``got``: their live results) measured two states of the machine, or "" if they
    did not: :func:`pair_drift` of their costs outside ``DRIFT``. Needs exactly two strategies; reads costs only."""
    if len(pair) != 2 or any("costs" not in got.get(st, {}) for st in pair):
        return ""
    d = pair_drift([got[pair[0]]["costs"]], [got[pair[1]]["costs"]], slots)[0]
    if not moved(d["factor"]):
        return ""
    return f"pair costs moved ({pair[0]} {d['busy']:.2f} busy, {pair[1]} {d['other_busy']:.2f})"


def run_pair(
    pair: list[str],
    k: int,
    nblocks: int,
    cfgs: dict[str, argparse.Namespace],
    name: str,
    run_dir: Path,
    args: argparse.Namespace,
    slots: int,
) -> dict[str, dict[str, Any]]:
    """Part ``k`` of each strategy's live run, back to back in the order ``pair``; each result also holds its ``tag`` and
    ``seeds`` (load generator, agents). If the two parts kept the slots so differently that they measured two states of
    the machine (:func:`pair_moved`: their costs alone, never a latency), both are run again, up to ``--live-retries``
    times, the first ones kept aside as ``TAG-movedN*`` and named in each result's ``retried``: the ``same`` column
    predicts part k of one strategy with the costs of part k of the other, so the two must have seen one machine."""
    got: dict[str, dict[str, Any]] = {}
    moves: dict[str, list[dict[str, str]]] = {st: [] for st in pair}
    tags = {st: f"{name}-{st}" + (f"-b{k}" if nblocks > 1 else "") for st in pair}
    for attempt in range(args.live_retries + 1):
        for strategy in pair:
            cfg = copy.copy(cfgs[strategy])
            cfg.duration = cfgs[strategy].duration / nblocks
            cfg.seed = args.seed + 1000 * k
            if cfg.agent_seed is not None:
                cfg.agent_seed = cfg.seed + AGENT_SEED_OFFSET
            got[strategy] = run_live_retrying(cfg, run_dir, tags[strategy], args.live_retries)
            got[strategy]["tag"], got[strategy]["seeds"] = tags[strategy], (cfg.seed, cfg.agent_seed)
        why = pair_moved(got, pair, slots) if attempt < args.live_retries else ""
        if not why:
            break
        for strategy in pair:
            keep_aside(run_dir, tags[strategy], f"moved{attempt + 1}")
            moves[strategy].append({"files": f"{tags[strategy]}-moved{attempt + 1}", "why": why})
        print(f"{name} part {k}: {why}; running the pair again", file=sys.stderr, flush=True)
    for strategy in pair:
        got[strategy]["retried"] = [*moves[strategy], *got[strategy].get("retried", [])]
    return got


def read_run(cfg: argparse.Namespace, run_dir: Path, tag: str) -> dict[str, Any]:
    """The stack's costs of a recorded live run (its trace and load generator samples in ``run_dir``)."""
    result: dict[str, Any] = {}
    got = analyse(cfg.record, run_dir / f"{tag}-gen0.npz", f"{tag}-gen0", cfg.agent_concurrency, cfg.warmup)
    costs = stack_mod.costs_from_trace(trace.parse(cfg.record.read_bytes()), skip_s=cfg.warmup)
    result["costs"] = costs
    result["client_ms"] = got["client_ms"]
    result["stack"] = stack_means(costs, got["client_ms"])
    return result


def stack_means(costs: stack_mod.RunCosts, client_ms: np.ndarray) -> dict[str, Any]:
    """The means of a run's stack costs, for the table."""
    return {
        "handler_mean_ms": float(costs.handler_ms.mean()) if costs.handler_ms.size else float("nan"),
        "agent_overhead_mean_ms": float(costs.overhead_ms.mean()) if costs.overhead_ms.size else float("nan"),
        "slot_gap_mean_ms": float(costs.gap_ms.mean()) if costs.gap_ms.size else float("nan"),
        "client_mean_ms": float(client_ms.mean()) if client_ms.size else float("nan"),
        "idle_dispatches": int(costs.idle_ms.size),
        "slot_waits": int(costs.gap_ms.size),
    }


def merge_blocks(blocks: list[dict[str, Any]], run_dir: Path, tags: list[str], cfg: argparse.Namespace, block_s: float) -> dict[str, Any]:
    """One strategy's live result from its blocks: the latency over all their tasks, their costs pooled."""
    if len(blocks) == 1:
        return {**blocks[0], "tags": tags}
    cpu: dict[str, Any] = {}
    for b in blocks:
        for role, v in b["cpu"].items():
            if role != "loadgen":
                cpu.setdefault(role, {"cpu_s": 0.0})["cpu_s"] += v["cpu_s"]
    whole = live.Trial("open", rate=cfg.rate, duration=block_s * len(blocks), warmup=cfg.warmup)
    result = live.summarise([run_dir / f"{t}-gen0.npz" for t in tags], whole, cpu)
    costs = stack_mod.RunCosts.concat([b["costs"] for b in blocks])
    client = np.concatenate([b["client_ms"] for b in blocks])
    return {**result, "costs": costs, "client_ms": client, "stack": stack_means(costs, client), "tags": tags}


def block_count(duration_s: float, blocks: int, block_s: float) -> int:
    """How many parts a live run of ``duration_s`` measured seconds is made in: ``blocks``, or more where a part would
    measure over ``block_s`` (``0``: ``blocks`` alone), an even number then, so that A B B A pairs hold every part."""
    if block_s <= 0 or duration_s <= blocks * block_s * (1 + 1e-9):
        return blocks
    n = int(np.ceil(duration_s / block_s - 1e-9))
    return n + n % 2


def block_plan(strategies: list[str], blocks: int) -> list[tuple[int, str]]:
    """The order of the live runs: each strategy's run in ``blocks`` parts, the order reversed every other block.

    Two strategies, two blocks: A B B A, so that a drift of the machine's speed during the
    workload (linear in time) reaches both strategies alike.
    """
    out: list[tuple[int, str]] = []
    for k in range(blocks):
        out += [(k, st) for st in (strategies if k % 2 == 0 else strategies[::-1])]
    return out


def run_calibration(
    live_result: dict[str, Any], source: Path, fallback_slot_ms: float, windows: bool = False
) -> stack_mod.Calibration:
    """The calibration the simulator takes from one live run: its handler times, hops, slot gaps and client part."""
    client = live_result["client_ms"]
    return stack_mod.from_run(
        live_result["costs"],
        client_ms=client if client.size else None,
        fallback_slot_ms=fallback_slot_ms,
        windows=windows,
        measured={"from_run": str(source), "what": "aicp.sim.stack.costs_from_trace + the load generator's part"},
    )


def expected_stack(cal: stack_mod.Calibration, rate: float) -> dict[str, float]:
    """The calibration's mean costs at ``rate`` (the mixture the simulator draws from)."""
    low, high, w = stack_mod.bracket(cal.levels, rate)
    lo, hi = stack_mod.summary(low), stack_mod.summary(high)
    return {k: (1 - w) * lo[k] + w * hi[k] for k in ("wake_mean_ms", "agent_overhead_mean_ms", "client_mean_ms")}


def run_sim(scenario: sc_mod.Scenario, strategy: str, calibration: Path | None, ci_window_s: float = 1.0) -> dict[str, Any]:
    """Mean over the scenario's replications of each replication's p50 and p99 (as ``aicp sim`` reports them), and
    95% intervals (``p50_ci``, ``p99_ci``) from the replications' tasks pooled (:func:`noise.window_bootstrap`)."""
    from aicp.sim.engine import Simulation
    from aicp.sim.metrics import COMPLETED
    from aicp.sim.runner import replication_seed

    data = sc_mod.to_data(scenario)
    data["calibration"] = None if calibration is None else {"file": str(calibration.resolve())}
    sc = sc_mod.from_data(data, scenario.name)
    p50, p99, util = [], [], []
    samples = []
    for k in range(sc.replications):
        res = Simulation(sc, strategy, replication_seed(sc.seed, k)).run()
        summary = res.summary
        lat = summary["latency_ms"]
        p50.append(lat["p50"] if lat["p50"] is not None else float("nan"))  # nothing completed: no percentile
        p99.append(lat["p99"] if lat["p99"] is not None else float("nan"))
        util.append(summary["utilisation"]["mean"])
        rec = res.records
        m = (rec["arrival"] >= sc.warmup_s) & (rec["outcome"] == COMPLETED)
        samples.append((rec["arrival"][m], (rec["end"][m] - rec["arrival"][m]) * 1000.0))
    ci = noise.window_bootstrap(*noise.join_runs(samples, ci_window_s), ci_window_s)
    return {"p50": float(np.mean(p50)), "p99": float(np.mean(p99)), "utilisation": float(np.mean(util)), "p50_ci": ci[50.0], "p99_ci": ci[99.0]}


def sim_spread(
    scenario: sc_mod.Scenario, strategy: str, calibration: Path | None, warmup_s: float, measured_s: float, seeds: int, first: int = 1000
) -> dict[str, np.ndarray]:
    """The p50 and p99 of ``seeds`` simulated runs as long as a live run (``warmup_s`` + ``measured_s``), each its own seed.

    How much the percentile of one run of that length moves from one sample of the workload
    to the next: the noise of a live estimate, which no model can predict below. Seeds
    ``first``, ``first + 1``, ... are apart from the replications ``run_sim`` averages (0, 1, 2).
    """
    from aicp.sim.engine import Simulation
    from aicp.sim.metrics import COMPLETED
    from aicp.sim.runner import replication_seed

    data = sc_mod.to_data(scenario)
    data.update(duration_s=warmup_s + measured_s, warmup_s=warmup_s)
    data["calibration"] = None if calibration is None else {"file": str(calibration.resolve())}
    sc = sc_mod.from_data(data, scenario.name)
    p50, p99 = [], []
    for k in range(seeds):
        rec = Simulation(sc, strategy, replication_seed(sc.seed, first + k)).run().records
        m = (rec["arrival"] >= warmup_s) & (rec["outcome"] == COMPLETED)
        ms = (rec["end"][m] - rec["arrival"][m]) * 1000.0
        p50.append(float(np.percentile(ms, 50)) if ms.size else float("nan"))
        p99.append(float(np.percentile(ms, 99)) if ms.size else float("nan"))
    return {"p50": np.array(p50), "p99": np.array(p99)}


# ----------------------------------------------------------------------------- the live run's own draws (the ``same`` column)
def _fleet(agents: int, agent_procs: int) -> list[tuple[str, int, int]]:
    """Each live agent as ``live.start_agents`` starts it: its name, its index in the fleet, its process's index."""
    return [
        (base_id if count == 1 else f"{base_id}-{j}", first + j, proc)
        for proc, (base_id, count, first) in enumerate(live.agent_groups(agents, agent_procs))
        for j in range(count)
    ]


def fleet_indexes(agents: int, agent_procs: int) -> dict[str, int]:
    """Each live agent's name -> its index in the fleet (what its seed adds), as ``live.start_agents`` names them."""
    return {name: index for name, index, _ in _fleet(agents, agent_procs)}


def fleet_procs(agents: int, agent_procs: int) -> dict[str, int]:
    """Each live agent's name -> the index of the process that runs it, as ``live.start_agents`` spreads them."""
    return {name: proc for name, _, proc in _fleet(agents, agent_procs)}


def live_draws(cfg: argparse.Namespace, fleet_index: int, agent_seed: int) -> Callable[[], float]:
    """The service draws (s) of one live agent, in the order it starts its tasks: the synthetic handler it runs, seeded alike."""
    dist, mean_ms = handlers.parse_service_time(cfg.service_time)
    sigma = getattr(cfg, "agent_sigma", None)
    return handlers.Synthetic(dist, mean_ms, sigma=0.5 if sigma is None else sigma, seed=agent_seed + fleet_index).service_time_s


def joined(trace_path: Path) -> list[str]:
    """The agents of a recorded run in the order they registered (the strategies' pool order)."""
    out: list[str] = []
    for ev in trace.parse(trace_path.read_bytes()):
        if isinstance(ev, trace.AgentUp) and ev.agent not in out:
            out.append(ev.agent)
        elif isinstance(ev, trace.Arrive):
            break  # every agent of the grid registers before the first task
    return out


#: a wake-up beyond [-1, +2] timer ticks: that task's draw does not match its seed (more than WAKE_MISMATCH of them: refused)
WAKE_MISMATCH = 0.2


def agents_lead_ms(cfg: argparse.Namespace) -> float:
    """The lead a live run's agents took off their draws before sleeping (ms; ``cfg.sleep_lead_ms``): 0 when the
    configuration has none, as runs made before the lead (their agents slept their whole draw)."""
    return float(getattr(cfg, "sleep_lead_ms", 0.0) or 0.0)


class Wakes(NamedTuple):
    """The agents' wake-ups of a seeded run's measured tasks (:func:`wakes_from_run`), in dispatch order."""

    wake_ms: np.ndarray  # signed handler time - the draw's sleep rounded to the timer
    proc: np.ndarray  # the agent process the task ran in (its index in ``live.agent_groups``)
    reply_t: np.ndarray  # when the router read the task's result (wall clock, s)


def wakes_from_run(trace_path: Path, cfg: argparse.Namespace, agent_seed: int, timer_ms: float = 1.0) -> Wakes:
    """The agents' wake-up per task of a seeded run (ms): the signed handler time minus what its draw asked the timer
    for, the draw less the agents' lead (``cfg.sleep_lead_ms``; absent: 0, agents before the lead), rounded to the timer;
    with the process each task ran in and when the router read its result.

    Each agent's draws are regenerated from its seed, one per task dispatched to it, in
    dispatch order (one connection keeps the order; every attempt draws). The handler time
    is that sleep rounded to the event loop's timer (uvloop: whole ms) plus a wake-up, flat
    in the draw (docs/SIMULATOR.md): that wake-up is what the run adds to the workload.
    Tasks arriving in the warm-up are left out (their draws are still consumed).
    """
    lead_ms = agents_lead_ms(cfg)
    names = fleet_indexes(cfg.agents, cfg.agent_procs)
    procs = fleet_procs(cfg.agents, cfg.agent_procs)
    order: list[tuple[str, str]] = []
    ok: dict[tuple[str, str], tuple[float, float]] = {}
    arrive: dict[str, float] = {}
    t0: float | None = None
    for ev in trace.parse(trace_path.read_bytes()):
        if isinstance(ev, trace.Arrive):
            arrive[ev.task] = ev.t
            t0 = ev.t if t0 is None else t0
        elif isinstance(ev, trace.Dispatch):
            order.append((ev.agent, ev.task))
        elif isinstance(ev, trace.Reply) and ev.ok and ev.service_ms is not None:
            ok[(ev.agent, ev.task)] = (ev.service_ms, ev.t)
    start = (t0 or 0.0) + cfg.warmup
    gens: dict[str, Callable[[], float]] = {}
    out: list[tuple[float, int, float]] = []
    for agent, task in order:
        if agent not in gens:
            if agent not in names:
                raise stack_mod.CalibrationError(f"{trace_path}: agent {agent} is not one the grid starts")
            gens[agent] = live_draws(cfg, names[agent], agent_seed)
        drawn = gens[agent]() * 1000.0
        got = ok.get((agent, task))
        if got is not None and arrive.get(task, start) >= start:
            out.append((got[0] - stack_mod.timer_sleep(drawn, lead_ms, timer_ms), procs[agent], got[1]))
    wake = np.array([w for w, _, _ in out])
    if wake.size == 0 or np.mean((wake < -timer_ms) | (wake > 2 * timer_ms)) > WAKE_MISMATCH:
        raise stack_mod.CalibrationError(f"{trace_path}: the handler times do not follow the agents' seeded draws")
    return Wakes(wake, np.array([p for _, p, _ in out], dtype=np.int64), np.array([t for _, _, t in out]))


def wake_from_run(trace_path: Path, cfg: argparse.Namespace, agent_seed: int, timer_ms: float = 1.0) -> np.ndarray:
    """The agents' wake-up per measured task of a seeded run (ms): :func:`wakes_from_run`'s ``wake_ms``."""
    return wakes_from_run(trace_path, cfg, agent_seed, timer_ms).wake_ms


#: a task whose agent woke this much later than its seeded draw (rounded to the timer) says: its process stalled (ms)
STALL_MS = 10.0
#: a wake-up over this many timer ticks is the task's process stalling (the stall track), not its timer's rounding
STALL_FROM_TICKS = 2.0


def stalls(run_dir: Path, tags: list[str], seeds: list[tuple[int, int | None]], cfg: argparse.Namespace) -> dict[str, Any] | None:
    """The stalls of a strategy's live run, read from its seeded agents' wake-ups (handler time - draw rounded to the
    timer, :func:`wake_from_run`): how many measured tasks woke over ``STALL_MS`` late, of how many, and the longest
    wake-up. A stall of one agent process queues every task that round_robin keeps sending
    to its agents, which the simulator, drawing each task's costs independently, has no way to do (docs/SIMULATOR.md,
    "Does the model lean against round_robin?"); for reading a row, never used to choose or drop one. ``None`` without
    seeded agents or where the handler times do not follow the draws."""
    wakes = []
    for tag, (_, agent_seed) in zip(tags, seeds, strict=True):
        if agent_seed is None:
            return None
        try:
            wakes.append(wake_from_run(run_dir / f"{tag}.jsonl", cfg, agent_seed))
        except (stack_mod.CalibrationError, OSError):
            return None
    w = np.concatenate(wakes) if wakes else np.array([])
    return {"tasks": int((w > STALL_MS).sum()), "max_wake_ms": float(w.max()) if w.size else float("nan"), "of": int(w.size)}


def stall_text(st: dict[str, Any] | None) -> str:
    if not st:
        return ""
    return f"  stalls: {st['tasks']} of {st['of']} tasks woke >{STALL_MS:g} ms late (latest {st['max_wake_ms']:.1f} ms)"


def chain_offsets(tracks: list[np.ndarray]) -> list[float]:
    """Where each of the time tracks of blocks run one after another (each ascending, from its own start) begins on
    one track: a block starts one mean gap of the block before it after that block's last time (1 s after it, for a
    block of one)."""
    out, off = [], 0.0
    for t in tracks:
        out.append(off)
        off += float(t[-1]) + (float(np.mean(np.diff(t))) if t.size > 1 else 1.0)
    return out


def chain_tracks(tracks: list[np.ndarray]) -> np.ndarray:
    """The blocks' time tracks as one ascending track (:func:`chain_offsets`)."""
    return np.concatenate([t + off for t, off in zip(tracks, chain_offsets(tracks), strict=True)])


def stall_intervals(wakes: Wakes, start_wall: float, skip_s: float, back_ms: float, procs: int, timer_ms: float = 1.0) -> list[list[tuple[float, float]]]:
    """The agent processes' stalls in one run, per process, as disjoint ascending ``[start, end)`` intervals (s on the
    intake track's clock: after ``start_wall + skip_s``).

    A task whose agent woke over two timer ticks late (what :data:`WAKE_MISMATCH` still takes for a wake-up) waited
    that long for its process, beyond the run's usual wake-up (the median): its process ran nothing from that much
    before it woke until it woke. It woke ``back_ms`` (the return hop) before the router read its result. Tasks of
    one process whose stalls overlap are one stall. O(n log n) for n tasks."""
    late = wakes.wake_ms > STALL_FROM_TICKS * timer_ms
    usual = float(np.median(wakes.wake_ms))
    end = wakes.reply_t - start_wall - skip_s - back_ms / 1000.0
    out: list[list[tuple[float, float]]] = []
    for proc in range(procs):
        m = late & (wakes.proc == proc)
        spans = sorted(zip((end[m] - (wakes.wake_ms[m] - usual) / 1000.0).tolist(), end[m].tolist(), strict=True))
        merged: list[tuple[float, float]] = []
        for s0, e0 in spans:
            if merged and s0 <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e0))
            else:
                merged.append((s0, e0))
        out.append([(round(a, 6), round(b, 6)) for a, b in merged if b > 0.0])
    return out


def same_calibration(
    lv: dict[str, Any],
    cfg: argparse.Namespace,
    run_dir: Path,
    fallback_slot_ms: float,
    block: int | None = None,
    intake: bool = True,
    stall_track: bool = False,
) -> stack_mod.Calibration:
    """A run's costs for the ``same`` column: its round trips, slot gaps and load generator part as ``run_calibration``,
    but the wake-ups over the agents' seeded draws instead of whole handler times (the draws come from the seeds).
    ``block``: that block's costs alone (``--same-costs block``: the other strategy's block next to it in time); else all pooled.
    ``intake``: the way into the router as the run's track in time (:func:`intake_track`), ``client_ms`` then the part after
    the router; else the whole client part per task, drawn independently (the model before, ``--no-intake``).
    ``stall_track`` (with ``intake``, ``--stalls``): the agent processes' stalls as a track on the same clock
    (:func:`stall_intervals`), and the wake-ups over two timer ticks out of the per-task draws; else every wake-up drawn
    per task (the default: on this machine the track changed no count, docs/SIMULATOR.md, "The agents' stalls")."""
    picked = range(len(lv["tags"])) if block is None else [block]
    wakes = {b: wakes_from_run(run_dir / f"{lv['tags'][b]}.jsonl", cfg, lv["seeds"][b][1]) for b in picked}  # type: ignore[arg-type]
    costs = lv["costs"] if block is None else lv["block_costs"][block]
    client = lv["client_ms"] if block is None else lv["block_client"][block]
    cal = stack_mod.from_run(
        costs,
        client_ms=client if client.size else None,
        handler=False,
        fallback_slot_ms=fallback_slot_ms,
        measured={"from_run": [str(run_dir / f"{lv['tags'][b]}.jsonl") for b in picked], "what": "costs_from_trace, wake-ups over the seeded draws"},
    )
    cal.timer_ms = 1.0
    cal.lead_ms = agents_lead_ms(cfg)  # the agents' rule, as wake_from_run read the wake-ups
    cal.levels[0].wake_ms = stack_mod.thin(np.concatenate([w.wake_ms for w in wakes.values()]))
    gens = [run_dir / f"{lv['tags'][b]}-gen0.npz" for b in picked]
    if intake and cal.levels[0].client_ms and all(g.exists() and Path(f"{g}.json").exists() for g in gens):
        # the way in as a track in time (the blocks one after another), the rest of the client part per task
        ts, lags, afters, tracked = [], [], [], []
        for b in picked:
            tag = lv["tags"][b]
            t, lag, after = intake_track(run_dir / f"{tag}.jsonl", run_dir / f"{tag}-gen0.npz", f"{tag}-gen0", cfg.warmup)
            if t.size:
                ts.append(t)
                lags.append(lag)
                afters.append(after)
                tracked.append(b)
        if ts:
            cal.levels[0].intake_t_s = chain_tracks(ts).tolist()
            cal.levels[0].intake_ms = np.round(np.concatenate(lags), 4).tolist()
            cal.levels[0].client_ms = stack_mod.thin(np.concatenate(afters))
        if ts and stall_track:
            # the agent processes' stalls on the same clock; the wake-ups they explain leave the per-task draws
            procs = len(live.agent_groups(cfg.agents, cfg.agent_procs))
            back_ms = 0.5 * float(np.median(costs.idle_ms)) if costs.idle_ms.size else 0.0
            track: list[list[tuple[float, float]]] = [[] for _ in range(procs)]
            for b, off in zip(tracked, chain_offsets(ts), strict=True):
                start_wall = float(json.loads(Path(f"{run_dir / lv['tags'][b]}-gen0.npz.json").read_text())["start_wall"])
                for proc, spans in enumerate(stall_intervals(wakes[b], start_wall, cfg.warmup, back_ms, procs, cal.timer_ms)):
                    track[proc].extend((s0 + off, e0 + off) for s0, e0 in spans)
            cal.levels[0].stall_s = track
            kept = [w.wake_ms[w.wake_ms <= STALL_FROM_TICKS * cal.timer_ms] if b in tracked else w.wake_ms for b, w in wakes.items()]
            cal.levels[0].wake_ms = stack_mod.thin(np.concatenate(kept))
    return cal


def run_sim_same(
    scenario: sc_mod.Scenario,
    strategy: str,
    calibration: Path | list[Path],
    cfg: argparse.Namespace,
    blocks: list[tuple[int, int | None, list[str]]],
    run_dir: Path,
    ci_window_s: float = 1.0,
) -> dict[str, Any]:
    """The simulator on the live run's own workload: per block, the load generator's arrivals and every agent's
    service draws regenerated from their seeds (``blocks``: loadgen seed, agent seed, the agents in join order),
    the stack's costs from ``calibration`` (one file for every block, or one per block); p50 and p99 over the blocks'
    tasks pooled as live, mean over replications.

    Common random numbers between the simulator and the live run: what is compared is the model, not two
    samples of the workload (a 20 s live run's p99 moves by a third between two seeds). Only inputs are read:
    the seeds and the agents' registration order, which the run fixes before its first task."""
    from aicp.sim.engine import Simulation
    from aicp.sim.metrics import COMPLETED
    from aicp.sim.runner import replication_seed

    names = fleet_indexes(cfg.agents, cfg.agent_procs)
    procs = fleet_procs(cfg.agents, cfg.agent_procs)
    horizon = cfg.warmup + cfg.duration / len(blocks)
    cals = calibration if isinstance(calibration, list) else [calibration] * len(blocks)
    if len(cals) != len(blocks):
        raise ValueError(f"{len(cals)} calibrations for {len(blocks)} blocks")
    scenarios = []
    for b, (gen_seed, _, _) in enumerate(blocks):
        times, t, gaps = [], 0.0, poisson_gaps(gen_seed, cfg.rate)
        while True:
            t += next(gaps)
            if t >= horizon:
                break
            times.append(t)
        csv = run_dir / f"{scenario.name}-{strategy}-b{b}-arrivals.csv"
        csv.write_text("t_s\n" + "".join(f"{x!r}\n" for x in times))
        data = sc_mod.to_data(scenario)
        data.update(duration_s=horizon, warmup_s=cfg.warmup, calibration={"file": str(cals[b].resolve())})
        data["workload"][0]["arrival"] = {"process": "trace", "file": str(csv.resolve())}
        scenarios.append(sc_mod.from_data(data, scenario.name))
    p50, p99, util = [], [], []
    samples = []
    for k in range(scenario.replications):
        lat, busy = [], []
        for b, (sc, (_, agent_seed, order)) in enumerate(zip(scenarios, blocks, strict=True)):
            # unseeded agents (grids before seeded draws): the arrivals only; the calibration's handler times serve
            draws = None if agent_seed is None else [live_draws(cfg, names[a], agent_seed) for a in order]
            # each agent takes the stalls of the process it ran in (the calibrated run's processes are the same)
            res = Simulation(sc, strategy, replication_seed(sc.seed, k * len(blocks) + b), draws=draws, procs=[procs[a] for a in order]).run()
            rec = res.records
            m = (rec["arrival"] >= cfg.warmup) & (rec["outcome"] == COMPLETED)
            lat.append((rec["end"][m] - rec["arrival"][m]) * 1000.0)
            samples.append((rec["arrival"][m], lat[-1]))
            busy.append(res.summary["utilisation"]["mean"])
        ms = np.concatenate(lat)
        p50.append(float(np.percentile(ms, 50)) if ms.size else float("nan"))
        p99.append(float(np.percentile(ms, 99)) if ms.size else float("nan"))
        util.append(float(np.mean(busy)))
    ci = noise.window_bootstrap(*noise.join_runs(samples, ci_window_s), ci_window_s)
    return {"p50": float(np.mean(p50)), "p99": float(np.mean(p99)), "utilisation": float(np.mean(util)), "p50_ci": ci[50.0], "p99_ci": ci[99.0]}


def old_seeds(row: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> list[tuple[int, int | None]]:
    """(load generator seed, agent seed) per block of an earlier grid's run: recorded since AGENT_SEED_OFFSET;
    before, seeded draws came with the blocks (agent seed = load generator seed), unless --fresh-draws."""
    if row.get("live_seeds"):
        return [(int(g), None if a is None else int(a)) for g, a in row["live_seeds"]]
    tags = row.get("live_tags") or []
    seeded = bool(tags) and all("-b" in t for t in tags) and "--fresh-draws" not in argv
    return [(args.seed + 1000 * k, args.seed + 1000 * k if seeded else None) for k in range(max(1, len(tags)))]


#: a pair of parts (the two strategies' part k, back to back) whose slots were held so differently that the queueing
#: factor 1 / (1 - busy) moved by more than this between them: they measured two states of the machine (docs/SIMULATOR.md)
DRIFT = 0.15


def busy_fraction(costs: stack_mod.RunCosts, slots: int) -> float:
    """How busy a live part kept its agents' slots: arrivals per second x (mean signed handler time + mean slot gap) / slots.

    Read from the stack's costs alone (what the simulator takes as inputs), never from a latency. NaN without tasks."""
    if costs.handler_ms.size == 0 or slots <= 0:
        return float("nan")
    gap = float(costs.gap_ms.mean()) if costs.gap_ms.size else 0.0
    return costs.rate_per_s * (float(costs.handler_ms.mean()) + max(0.0, gap)) / 1000.0 / slots


def pair_drift(mine: list[stack_mod.RunCosts], theirs: list[stack_mod.RunCosts], slots: int) -> list[dict[str, float]]:
    """Per part k, how much the other strategy's part k (its neighbour in time, whose costs ``same`` takes) held the
    slots differently: ``busy`` and ``other_busy``, and ``factor`` = (1 - busy) / (1 - other_busy), the ratio of the
    queueing factors 1 / (1 - busy) the two parts imply (above 1: the other part ran on a slower machine). Near
    saturation a few percent of handler time moves this a lot: g6 of 2026-11-28 21:53, least_loaded's last part 0.87
    busy (its agents woke 0.74 ms late on average) against round_robin's 0.77 just before it (0.37 ms)."""
    out = []
    for a, b in zip(mine, theirs, strict=False):
        ra, rb = busy_fraction(a, slots), busy_fraction(b, slots)
        factor = (1.0 - ra) / (1.0 - rb) if rb < 1.0 and ra < 1.0 else float("inf")
        out.append({"busy": ra, "other_busy": rb, "factor": factor})
    return out


def moved(factor: float) -> bool:
    """A :func:`pair_drift` factor outside [1 / (1 + DRIFT), 1 + DRIFT] (infinite: a part at or past saturation); NaN: no."""
    if math.isnan(factor):
        return False
    return factor <= 0.0 or abs(math.log(factor)) > math.log(1.0 + DRIFT)


def drift_text(drift: list[dict[str, float]]) -> str:
    """The parts whose pair moved, for a row of the table ("" if none)."""
    parts = [k for k, d in enumerate(drift) if moved(d["factor"])]
    if not parts:
        return ""
    return "  PAIR COSTS MOVED (" + ", ".join(f"part {k}: busy {drift[k]['busy']:.2f} vs {drift[k]['other_busy']:.2f}" for k in parts) + ")"


def flags(row: dict[str, Any]) -> str:
    """What to distrust in a row: its live run (failed tasks: an incident, rerun it; or under 90% throughput), or the run its ``other`` costs come from."""
    out = ""
    if row.get("live_failed"):
        out += "  LIVE FAILED (rerun)"
    elif row["live_overloaded"]:
        out += "  LIVE OVERLOADED"
    if row.get("other_failed"):
        out += "  OTHER RUN FAILED"
    if row.get("live_retried"):
        out += f"  {len(row['live_retried'])} PART(S) RUN AGAIN (disturbed, kept aside: grid.json live_retried)"
    return out + drift_text(row.get("live_pair_drift") or [])


def _err(pred: float, live_v: float) -> str:
    return f"{100.0 * (pred - live_v) / live_v:+.0f}%" if live_v > 0 else "n/a"


def _within(pred: float, live_v: float) -> bool:
    return live_v > 0 and abs(pred - live_v) <= GOAL * live_v


GOAL = 0.15


#: what starting and stopping one live run's router, agents and load generator takes beside its warm-up (s; an estimate
#: for the planner's print, from the grids of 2026-11-28 on an idle machine)
RUN_START_S = 3.0

#: the length of the simulated runs whose p99 spread sets a live run's length (seconds, after the warm-up)
SPREAD_REF_S = 10.0


SHORT = {"exponential": "exp", "constant": "const", "lognormal": "logn"}


def plan_durations(
    scenarios: list[tuple[Path, sc_mod.Scenario]], cal_path: Path | None, args: argparse.Namespace, width: int
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    """Each workload's p99 spread over seeds of a simulated 10 s run, per strategy, and (no ``--resim``) the measured
    seconds of its live runs: as long as the noisier strategy needs for ``--target-spread`` within
    [``--live-duration``, ``--live-max``], the longest cut alike if all add up to more than ``--live-budget`` per workload.
    Both strategies of a workload run equally long (the A B B A blocks). ``--target-spread 0``: nothing (the old rule)."""
    if args.target_spread <= 0:
        return {}, {}
    spreads: dict[str, dict[str, dict[str, float]]] = {}
    for _, scenario in scenarios:
        spreads[scenario.name] = {}
        for st in scenario.strategies:
            got = sim_spread(scenario, st, cal_path, args.live_warmup, SPREAD_REF_S, args.spread_seeds)
            spreads[scenario.name][st] = {q: noise.relative_spread(got[q]) for q in ("p50", "p99")}
    needs = [
        max(
            noise.duration_for(v["p99"], SPREAD_REF_S, args.target_spread, args.live_duration, args.live_max)
            for v in spreads[sc.name].values()
        )
        for _, sc in scenarios
    ]
    if args.resim is not None:
        return spreads, {}
    lengths = noise.allocate(needs, args.live_budget * len(scenarios), args.live_duration)
    plan = {sc.name: round(d, 1) for (_, sc), d in zip(scenarios, lengths, strict=True)}
    print(
        f"live runs' lengths: p99 sd/mean over {args.spread_seeds} simulated {SPREAD_REF_S:g} s runs per strategy"
        f"{' (with ' + str(cal_path) + ')' if cal_path else ' (no stack costs: a floor)'}, target {100 * args.target_spread:g}%, "
        f"[{args.live_duration:g}, {args.live_max:g}] s, at most {args.live_budget:g} s per workload on average",
        flush=True,
    )
    for (_, sc), need in zip(scenarios, needs, strict=True):
        worst = max(v["p99"] for v in spreads[sc.name].values())
        print(
            f"  {sc.name:{width}} {what(sc):42} spread at {SPREAD_REF_S:g} s "
            + " ".join(f"{st} {100 * v['p99']:4.1f}%" for st, v in spreads[sc.name].items())
            + f"; needs {need:4.0f} s, runs {plan[sc.name]:4.0f} s in {block_count(plan[sc.name], args.blocks, args.block_s)} parts "
            f"(spread then {100 * worst * (SPREAD_REF_S / plan[sc.name]) ** 0.5:4.1f}%)",
            flush=True,
        )
    runs = sum(len(sc.strategies) * block_count(plan[sc.name], args.blocks, args.block_s) for _, sc in scenarios)
    measured = sum(len(sc.strategies) * plan[sc.name] for _, sc in scenarios)
    print(
        f"  live: {runs} runs, {measured:.0f} s measured, about {measured + runs * (args.live_warmup + RUN_START_S):.0f} s with their warm-ups "
        f"and starts (~{RUN_START_S:g} s each), before the simulations",
        flush=True,
    )
    return spreads, plan


def what(scenario: sc_mod.Scenario) -> str:
    """A one-group, one-Poisson-workload scenario in a few words: ``4x1 exp 6.0 ms, 500/s, 75% busy``."""
    g, w = scenario.agents[0], scenario.workload[0]
    d = g.service_time
    mean = getattr(d, "mean_ms", float("nan")) / g.speed
    shape = f"logn {mean:.1f} ms s={d.sigma:.2f}" if isinstance(d, sc_mod.LognormalDist) else f"{SHORT.get(str(type(d).__struct_config__.tag), 'other')} {mean:.1f} ms"
    rate = getattr(w.arrival, "rate_per_s", float("nan"))
    busy = rate * mean / 1000.0 / (g.count * g.concurrency)
    return f"{g.count}x{g.concurrency} {shape}, {rate:.0f}/s, {100 * busy:.0f}% busy"


def live_interval(run_dir: Path, tags: list[str], warmup_s: float, window_s: float) -> dict[float, tuple[float, float]]:
    """95% intervals of a live run's p50 and p99 (its blocks' tasks pooled, as the table's figure), resampling time windows."""
    runs = [noise.run_latencies(run_dir / f"{t}-gen0.npz", warmup_s) for t in tags if (run_dir / f"{t}-gen0.npz").exists()]
    return noise.window_bootstrap(*noise.join_runs(runs, window_s), window_s)


def print_intervals(rows: list[dict[str, Any]], cols: list[str], width: int, window_s: float) -> None:
    """The p99s with their 95% intervals, each column's verdict, and the counts: misses that the intervals leave undecided apart."""

    def iv(ci: tuple[float, float]) -> str:
        return f"[{ci[0]:6.1f},{ci[1]:6.1f}]" if all(np.isfinite(ci)) else "[   n/a,   n/a]"

    print(
        f"\np99 with 95% intervals (time windows of {window_s:g} s resampled; 'noise': outside 15% but within it for some pair of "
        "values in the intervals; 'same' shares the live run's sample, so only its own figure counts). spread: the simulator's p99 "
        "sd/mean over seeds of a run as long as the live one"
    )
    head = " ".join(f"{c:>6} {'interval':15} {'':5}" for c in cols)
    print(f"{'workload':{width}} {'strategy':13} {'secs':>4} {'spread':>6} | {'live p99':>8} {'interval':15} | {head}")
    for r in rows:
        cells = " ".join(f"{r[f'{c}_p99']:6.1f} {iv(r[f'{c}_p99_ci'])} {r[f'{c}_p99_verdict']:5}" for c in cols)
        spread = r.get("spread_p99_expected", float("nan"))
        print(
            f"{r['workload']:{width}} {r['strategy']:13} {r['live_duration_s']:4.0f} {100 * spread:5.1f}% | {r['live_p99']:8.2f} "
            f"{iv(r['live_p99_ci'])} | {cells}"
        )
    for c in cols:
        for q in ("p50", "p99"):
            v = [r.get(f"{c}_{q}_verdict") for r in rows]
            print(f"{c:5} {q}: {v.count('ok')} within 15%, {v.count('noise')} misses within the intervals, {v.count('MISS')} beyond them")


def bias(rows: list[dict[str, Any]], cols: list[str]) -> list[dict[str, Any]]:
    """Each column's signed error (prediction / live - 1) per strategy and percentile over the rows: mean, its standard
    error, median, and how many rows lean each way. A model that is right only on average scatters around 0; one that
    misses something a strategy brings about leans one way in that strategy's rows. Rows whose live run (or the run
    their costs came from) failed are left out, as from the counts of rows the live stack carried."""
    out = []
    for c in cols:
        for st in sorted({r["strategy"] for r in rows}):
            for q in ("p50", "p99"):
                e = np.array([r[f"{c}_{q}"] / r[f"live_{q}"] - 1.0 for r in rows if r["strategy"] == st and r[f"live_{q}"] > 0
                              and not r.get("live_failed") and not r.get("other_failed") and np.isfinite(r[f"{c}_{q}"])])
                if e.size == 0:
                    continue
                out.append({"column": c, "strategy": st, "q": q, "rows": int(e.size), "mean": float(e.mean()),
                            "se": float(e.std(ddof=1) / np.sqrt(e.size)) if e.size > 1 else float("nan"),
                            "median": float(np.median(e)), "low": int((e < 0).sum()), "high": int((e > 0).sum())})
    return out


def print_bias(leans: list[dict[str, Any]]) -> None:
    print("\nsigned error per column, strategy and percentile over the rows (prediction / live - 1): mean +- standard error, median, rows low/high")
    for b in leans:
        print(f"{b['column']:5} {b['strategy']:13} {b['q']}: mean {100 * b['mean']:+5.1f}% +- {100 * b['se']:4.1f}, "
              f"median {100 * b['median']:+5.1f}%, {b['low']} low / {b['high']} high of {b['rows']}")


def random_grid_files(args: argparse.Namespace, run_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """``--grid-random N``: N workloads drawn with ``--seed`` into ``run_dir/workloads``; their files and descriptions."""
    box = calibration_draw.draw(args.grid_random, args.seed, max_rate=args.max_rate, min_rate=args.min_rate)
    files = calibration_draw.write(box, run_dir / "workloads", args.seed)
    print(
        f"{len(files)} workloads drawn (seed {args.seed}) from the issue's box, rate in [{args.min_rate:g}, {args.max_rate:g}]/s "
        f"({100 * box.accepted_share:.0f}% of the box's draws): {run_dir / 'workloads'}",
        flush=True,
    )
    for f, w in zip(files, box.workloads, strict=True):
        print(f"  {f.stem}: {w.describe()}", flush=True)
    return files, {w.name: w.describe() for w in box.workloads}


def grid(args: argparse.Namespace) -> int:
    """Each workload x strategy live, then simulated: ideal, [probe calibration], own-run costs, other-run costs."""
    if args.grid is not None and args.grid_random:
        raise SystemExit("--grid and --grid-random: one or the other")
    if args.grid_random and args.resim is not None:
        raise SystemExit("--resim takes --grid RUN_FOLDER/workloads (the files --grid-random wrote), not --grid-random")
    files: list[Path] = []
    if args.grid is not None:
        files = sorted(args.grid.glob("*.toml")) if args.grid.is_dir() else [args.grid]
        if not files:
            raise SystemExit(f"{args.grid}: no scenario files")
        sc_mod.load(files[0])  # a bad folder fails before any live run
    t0 = time.monotonic()
    cal_path: Path | None = None
    earlier: dict[tuple[str, str], dict[str, Any]] = {}
    lead_ms = handlers.SLEEP_LEAD_MS  # what the live agents' sleeps take off their draws
    if args.resim is not None:  # the live runs of an earlier grid, simulated again (no live run now)
        old = json.loads((args.resim / "grid.json").read_text())
        earlier = {(r["workload"], r["strategy"]): r for r in old["rows"]}
        lead_ms = float(old.get("sleep_lead_ms", 0.0))  # grids before the lead: its agents slept their whole draw
    if args.calibration is not None:
        cal_path = args.calibration
        stack_mod.load(cal_path)
    if args.resim is not None:
        run_dir = args.resim
    elif args.probe and cal_path is None:
        cal, run_dir = measure(args)
        cal_path = run_dir / "calibration.json"
        write(cal, cal_path)
        print(f"probe calibration {cal_path}: {describe(cal)}", flush=True)
    else:
        run_dir = args.out_dir / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-grid")
        run_dir.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, str] = {}
    if args.grid_random:
        files, drawn = random_grid_files(args, run_dir)
    scenarios = [(f, sc_mod.load(f)) for f in files]
    sign_ms = sign_cost_ms()
    rows: list[dict[str, Any]] = []
    wanted = set(args.columns.split(","))
    known = {"sim", "probe", "run", "other", "same", "own"}
    if not wanted <= known:
        raise SystemExit(f"--columns: {', '.join(sorted(wanted - known))}: none such (sim, probe, run, other, same, own)")
    cols = [c for c in ("sim", *(["probe"] if cal_path else []), "run", "other", "same", "own") if c in wanted]
    width = max([22, *(len(sc.name) for _, sc in scenarios)])
    spreads, plan = plan_durations(scenarios, cal_path, args, width)
    head = " ".join(f"{c:>6} {'err':>5}" for c in cols)
    header = f"{'workload':{width}} {'what':42} {'strategy':13} {'util':>5} | {'live p50':>8} {head} | {'live p99':>8} {head}"
    print(header + "\n" + "-" * len(header), flush=True)
    for path, scenario in scenarios:
        lives: dict[str, dict[str, Any]] = {}
        cfgs: dict[str, argparse.Namespace] = {}
        for strategy in scenario.strategies:
            cfgs[strategy] = live_args_for(scenario, path, strategy, args)
            cfgs[strategy].sleep_lead_ms = lead_ms
        spread10 = spreads.get(scenario.name, {})  # strategy -> p50/p99 -> sd/mean at 10 s
        slots = scenario.agents[0].count * scenario.agents[0].concurrency
        if scenario.name in plan:
            for strategy in scenario.strategies:
                cfgs[strategy].duration = plan[scenario.name]
        if args.resim is None:
            # live first, all strategies back to back, each in args.blocks parts (A B B A): a drift of the machine between
            # the runs reaches both strategies alike; block k of every strategy draws the same arrivals and service times
            parts: dict[str, list[dict[str, Any]]] = {st: [] for st in scenario.strategies}
            tags: dict[str, list[str]] = {st: [] for st in scenario.strategies}
            seeds: dict[str, list[tuple[int, int | None]]] = {st: [] for st in scenario.strategies}
            nblocks = block_count(max(c.duration for c in cfgs.values()), args.blocks, args.block_s)
            plan_k = block_plan(list(scenario.strategies), nblocks)
            for k in range(nblocks):
                pair = [st for kk, st in plan_k if kk == k]
                got = run_pair(pair, k, nblocks, cfgs, scenario.name, run_dir, args, slots)
                for strategy in pair:
                    parts[strategy].append(got[strategy])
                    tags[strategy].append(got[strategy]["tag"])
                    seeds[strategy].append(got[strategy]["seeds"])
            for strategy in scenario.strategies:
                cfgs[strategy].record = run_dir / f"{tags[strategy][0]}.jsonl"
                block_s = cfgs[strategy].duration / nblocks
                lives[strategy] = merge_blocks(parts[strategy], run_dir, tags[strategy], cfgs[strategy], block_s)
                lives[strategy]["seeds"] = seeds[strategy]
                lives[strategy]["block_costs"] = [b["costs"] for b in parts[strategy]]
                lives[strategy]["retried"] = [r for b in parts[strategy] for r in b.get("retried", [])]
                lives[strategy]["block_client"] = [b["client_ms"] for b in parts[strategy]]
        else:
            for strategy in scenario.strategies:
                if (scenario.name, strategy) not in earlier:
                    continue
                old_row = earlier[(scenario.name, strategy)]
                cfgs[strategy].warmup = old_row.get("live_warmup_s", cfgs[strategy].warmup)
                cfgs[strategy].duration = old_row.get("live_duration_s", cfgs[strategy].duration)  # all blocks
                blocks = []
                for tag in old_row.get("live_tags") or [f"{scenario.name}-{strategy}"]:
                    cfgs[strategy].record = run_dir / f"{tag}.jsonl"
                    blocks.append(read_run(cfgs[strategy], run_dir, tag))
                costs = stack_mod.RunCosts.concat([b["costs"] for b in blocks])
                client = np.concatenate([b["client_ms"] for b in blocks])
                lives[strategy] = {
                    "latency_ms": {"p50": old_row["live_p50"], "p99": old_row["live_p99"], "samples": old_row["live_samples"]},
                    "errors": old_row["live_errors"],
                    "lost": old_row["live_lost"],
                    "cpu": old_row["live_cpu"],
                    "throughput_per_s": old_row["live_throughput_per_s"],
                    "costs": costs,
                    "client_ms": client,
                    "stack": stack_means(costs, client),
                    "tags": old_row.get("live_tags") or [f"{scenario.name}-{strategy}"],
                    "seeds": old_seeds(old_row, args, old.get("argv", [])),
                    "retried": old_row.get("live_retried", []),
                    "block_costs": [b["costs"] for b in blocks],
                    "block_client": [b["client_ms"] for b in blocks],
                }
        if not lives:
            continue
        cal_files: dict[str, Path | None] = {}
        for strategy, lv in lives.items():
            try:
                out = run_dir / f"{scenario.name}-{strategy}-run-calibration{'-resim' if args.resim is not None else ''}.json"
                stack_mod.write(run_calibration(lv, cfgs[strategy].record, sign_ms, args.windows), out)
                cal_files[strategy] = out
            except stack_mod.CalibrationError as exc:
                print(f"{scenario.name} {strategy}: no run costs: {exc}", file=sys.stderr)
                cal_files[strategy] = None
        same_files: dict[str, Path | list[Path] | None] = {}
        # --same-costs block: block k of a strategy is predicted with block k of the other, its neighbour in time (A B B A),
        # so that the machine's state between blocks (its round trips moved 1.06 -> 1.90 ms within one 40 s workload) is
        # the predicted block's; pooled: every block of the other strategy alike (the grids before)
        per_block = args.same_costs == "block" and len({len(lv["tags"]) for lv in lives.values()}) == 1
        for strategy, lv in lives.items():
            same_files[strategy] = None
            if not {"same", "own"} & set(cols) or any(a is None for _, a in lv["seeds"]):
                continue
            try:
                # the pooled costs are always written (the run's record); with --same-costs block, each block's too
                out = run_dir / f"{scenario.name}-{strategy}-same-calibration.json"
                stack_mod.write(same_calibration(lv, cfgs[strategy], run_dir, sign_ms, intake=not args.no_intake, stall_track=args.stalls), out)
                same_files[strategy] = out
                if per_block and len(lv["tags"]) > 1:
                    outs = []
                    for b in range(len(lv["tags"])):
                        out = run_dir / f"{scenario.name}-{strategy}-b{b}-same-calibration.json"
                        stack_mod.write(same_calibration(lv, cfgs[strategy], run_dir, sign_ms, block=b, intake=not args.no_intake, stall_track=args.stalls), out)
                        outs.append(out)
                    same_files[strategy] = outs
            except stack_mod.CalibrationError as exc:
                print(f"{scenario.name} {strategy}: no same-draws costs: {exc}", file=sys.stderr)
        order = [st for st in scenario.strategies if st in lives]
        for k, strategy in enumerate(order):
            lv = lives[strategy]
            other = order[(k + 1) % len(order)] if len(order) > 1 else None
            own, theirs = cal_files[strategy], cal_files.get(other) if other else None
            inputs = {"sim": None, "probe": cal_path, "run": own, "other": theirs}
            sims: dict[str, dict[str, Any] | None] = {
                c: run_sim(scenario, strategy, inputs[c], args.ci_window) if c == "sim" or inputs[c] else None
                for c in cols
                if c not in ("same", "own")
            }
            theirs_same = same_files.get(other) if other else None
            # each block's seeds and agents in join order: the run's own workload, for 'same' and 'own' alike
            same_blocks = (
                [(g, a, joined(run_dir / f"{t}.jsonl")) for t, (g, a) in zip(lv["tags"], lv["seeds"], strict=True)] if {"same", "own"} & set(cols) else []
            )
            if "same" in cols:
                # the other run's costs, on this run's own arrivals and service draws (regenerated from the seeds)
                # unseeded agents: the run's own arrivals, and the other run's handler times as the other column draws them
                same_cal: Path | list[Path] | None = theirs_same if all(a is not None for _, a, _ in same_blocks) else theirs
                sims["same"] = run_sim_same(scenario, strategy, same_cal, cfgs[strategy], same_blocks, run_dir, args.ci_window) if same_cal else None
            if "own" in cols:
                # a check of the model, not a prediction: the run's OWN costs (block by block) on its own draws, as 'same'
                # (never its latency): what costs drawn independently per task can do at best; what it misses, the model misses
                mine = same_files.get(strategy)
                sims["own"] = run_sim_same(scenario, strategy, mine, cfgs[strategy], same_blocks, run_dir, args.ci_window) if mine else None
            lat = lv["latency_ms"]
            live_ci = live_interval(run_dir, lv["tags"], cfgs[strategy].warmup, args.ci_window)
            row: dict[str, Any] = {
                "workload": scenario.name,
                "what": drawn.get(scenario.name) or what(scenario),
                "file": str(path),
                "strategy": strategy,
                "other_strategy": other,
                "sim_utilisation": next((v["utilisation"] for v in sims.values() if v), float("nan")),
                "live_p50": lat["p50"],
                "live_p99": lat["p99"],
                "live_samples": lat["samples"],
                "live_errors": lv["errors"],
                "live_lost": lv["lost"],
                "live_cpu": lv["cpu"],
                "live_throughput_per_s": lv["throughput_per_s"],
                "stack_live": lv["stack"],
                "live_overloaded": overloaded(lv, cfgs[strategy].rate),
                "live_failed": failed(lv),
                "other_failed": bool(other and failed(lives[other])),
                "live_warmup_s": cfgs[strategy].warmup,
                "live_duration_s": cfgs[strategy].duration,
                "live_tags": lv["tags"],
                "live_seeds": lv["seeds"],
                "live_retried": lv.get("retried", []),
                "live_stalls": stalls(run_dir, lv["tags"], lv["seeds"], cfgs[strategy]),
                # per part, how busy it and the other strategy's part next to it kept the slots (their costs alone)
                "live_pair_drift": pair_drift(lv["block_costs"], lives[other]["block_costs"], slots) if other else [],
            }
            for q, qf in (("p50", 50.0), ("p99", 99.0)):
                # the simulator's spread (sd/mean) over seeds of a 10 s run, and what it gives at the live run's length
                ref = spread10.get(strategy, {}).get(q, float("nan"))
                row[f"spread_{q}_10s"] = ref
                row[f"spread_{q}_expected"] = ref * (SPREAD_REF_S / cfgs[strategy].duration) ** 0.5
                # the window bootstrap's interval, widened to +-1.96 x that spread where narrower: the bootstrap alone falls
                # short where bursts outlast a window (docs/SIMULATOR.md)
                row[f"live_{q}_ci_boot"] = live_ci[qf]
                row[f"live_{q}_ci"] = noise.widen(live_ci[qf], lat[q], row[f"spread_{q}_expected"])
            for c in cols:
                col = sims.get(c)
                for q in ("p50", "p99"):
                    row[f"{c}_{q}"] = col[q] if col else float("nan")
                    row[f"{c}_{q}_ci"] = col[f"{q}_ci"] if col else (float("nan"), float("nan"))
                    # "same" shares the live run's sample: its interval is no allowance for the live one's noise
                    row[f"{c}_{q}_verdict"] = noise.verdict(
                        row[f"{c}_{q}"], lat[q], (lat[q], lat[q]) if c in ("same", "own") else row[f"live_{q}_ci"],
                        None if c in ("same", "own") else row[f"{c}_{q}_ci"],
                        GOAL,
                    )
            rows.append(row)

            def cells(q: str, row: dict[str, Any] = row) -> str:
                return " ".join(f"{row[f'{c}_{q}']:6.2f} {_err(row[f'{c}_{q}'], row[f'live_{q}']):>5}" for c in cols)

            print(
                f"{scenario.name:{width}} {row['what']:42} {strategy:13} {row['sim_utilisation']:5.2f} | {lat['p50']:8.2f} {cells('p50')} | "
                f"{lat['p99']:8.2f} {cells('p99')}"
                + flags(row),
                flush=True,
            )
    print(
        "\nsim: no stack costs; probe: a calibration measured before the grid; run: the costs read from this run's trace "
        "(handler times, hops, slot gaps, the load generator's part; never its latency); other: the same from the other "
        "strategy's live run of the workload (nothing from the run predicted)."
        + (" own: 'same' with the run's own costs, block by block (a check of the model, not a prediction)." if "own" in cols else "")
        + "\nthe stack's costs per live run, means in ms:"
    )
    for r in rows:
        a = r["stack_live"]
        print(
            f"{r['workload']:22} {r['strategy']:13} handler {a['handler_mean_ms']:6.3f}  round trip {a['agent_overhead_mean_ms']:6.3f} "
            f"({a['idle_dispatches']} idle dispatches)  slot gap {a['slot_gap_mean_ms']:6.3f} ({a['slot_waits']} waits)  "
            f"client {a['client_mean_ms']:6.3f}  live throughput {r['live_throughput_per_s']:.0f}/s" + stall_text(r.get("live_stalls"))
        )
    carried = [r for r in rows if not r["live_overloaded"] and not r.get("other_failed")]
    for c in (c for c in cols if c != "sim"):
        within = [r for r in rows if _within(r[f"{c}_p50"], r["live_p50"]) and _within(r[f"{c}_p99"], r["live_p99"])]
        p50 = sum(_within(r[f"{c}_p50"], r["live_p50"]) for r in rows)
        p99 = sum(_within(r[f"{c}_p99"], r["live_p99"]) for r in rows)
        print(
            f"{c:5}: p50 within 15% in {p50} of {len(rows)} rows, p99 in {p99}, both in {len(within)} "
            f"({len([r for r in within if r in carried])} of the {len(carried)} whose live runs, its and the other's, the stack carried)"
        )
    print_intervals(rows, cols, width, args.ci_window)
    leans = bias(rows, cols)
    print_bias(leans)
    print(f"{time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    keys = ["live_p50", *(f"{c}_p50" for c in cols), "live_p99", *(f"{c}_p99" for c in cols)]
    cis = [f"{k}_ci_{e}" for k in ("live_p99", *(f"{c}_p99" for c in cols)) for e in ("lo", "hi")]
    lines = ["workload,strategy,sim_utilisation," + ",".join(keys) + ",live_samples,live_overloaded,live_duration_s," + ",".join(cis)]
    for r in rows:
        lines.append(
            ",".join(
                [r["workload"], r["strategy"], f"{r['sim_utilisation']:.3f}"]
                + [f"{r[k]:.3f}" for k in keys]
                + [str(r["live_samples"]), str(r["live_overloaded"]).lower(), f"{r['live_duration_s']:.1f}"]
                + [f"{r[k[: -len('_ci_lo')] + '_ci'][0 if k.endswith('_lo') else 1]:.3f}" for k in cis]
            )
        )
    suffix = "-resim" if args.resim is not None else ""
    (run_dir / f"grid{suffix}.csv").write_text("\n".join(lines) + "\n")
    (run_dir / f"grid{suffix}.json").write_text(
        json.dumps(
            {"probe_calibration": str(cal_path) if cal_path else None, "sleep_lead_ms": lead_ms, "rows": rows, "bias": leans, "load_avg_1m": os.getloadavg()[0], "argv": sys.argv},
            indent=2,
            default=str,
        )
    )
    print(f"results: {run_dir}")
    return 0


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--out", type=Path, default=None, help="write the calibration here (default: calibration.json in the run folder)")
    add(
        "--out-dir",
        type=Path,
        default=Path("results") / "calibration",
        help="parent of the run folder (default results/calibration)",
    )
    add("--agents", type=int, default=8, help="probe: agents (default 8)")
    add(
        "--agent-procs",
        type=int,
        default=2,
        help="processes the agents are spread over, probe and grid (default 2, as aicp bench)",
    )
    add("--probe-ms", type=float, default=1.0, help="probe: the agents' constant service, whole milliseconds (default 1)")
    add("--probe-rates", default="100,400,1000", help="probe: task rates, one trial each (default 100,400,1000)")
    add("--duration", type=float, default=5.0, help="probe: measured seconds per rate (default 5)")
    add("--busy-ms", type=float, default=4.0, help="probe: one agent's constant service in the busy trial (default 4)")
    add("--timer-ms", type=float, default=1.0, help="the agents' sleep granularity (uvloop: 1 ms; 0: none)")
    add(
        "--grid",
        type=Path,
        default=None,
        help="a folder of scenario files (or one file): run each live and simulated, print the table",
    )
    add(
        "--grid-random",
        type=int,
        default=0,
        metavar="N",
        help="instead of --grid: N workloads drawn from the issue's box with --seed (aicp/lab/calibration_draw.py), written to the run folder's "
        "workloads/ (rerun one with --grid FILE)",
    )
    add("--max-rate", type=float, default=800.0, help="--grid-random: draw again a workload above this rate, tasks/s (default 800)")
    add("--min-rate", type=float, default=40.0, help="--grid-random: draw again a workload under this rate, tasks/s (default 40)")
    add(
        "--target-spread",
        type=float,
        default=0.06,
        help="--grid: make each live run long enough that its p99's sd/mean over samples of the workload, as the simulator "
        "estimates it, is at most this, within [--live-duration, --live-max] (default 0.06; 0: the --live-samples rule)",
    )
    add("--live-max", type=float, default=40.0, help="--grid: the longest live run per strategy, measured seconds (default 40)")
    add(
        "--live-budget",
        type=float,
        default=40.0,
        help="--grid: measured seconds per workload and strategy on average, at most; the longest runs are cut alike to fit "
        "(default 40, = --live-max: every run as long as planned; 16 before)",
    )
    add("--spread-seeds", type=int, default=8, help="--grid: simulated 10 s runs per strategy that estimate the spread (default 8)")
    add("--ci-window", type=float, default=1.0, help="--grid: the time windows the intervals resample, seconds (default 1)")
    add("--calibration", type=Path, default=None, help="--grid: also simulate with this calibration (a 'probe' column)")
    add(
        "--resim",
        type=Path,
        default=None,
        help="--grid: no live runs; simulate again the live runs recorded in this earlier grid's run folder",
    )
    add(
        "--windows",
        action="store_true",
        help="--grid: the run costs second by second, drawn at the same moment of the simulated clock (default: pooled)",
    )
    add("--probe", action="store_true", help="--grid: measure a probe calibration first and add its column (as aicp calibrate)")
    add("--live-duration", type=float, default=10.0, help="--grid: measured seconds per live run, at least (default 10)")
    add(
        "--live-samples",
        type=int,
        default=4000,
        help="--grid: lengthen a slow workload's live run to this many tasks, up to 3x (default 4000)",
    )
    add(
        "--blocks",
        type=int,
        default=2,
        help="--grid: each strategy's live run in at least N parts, the order reversed every other part (2: A B B A; 1: A B, as before)",
    )
    add(
        "--block-s",
        type=float,
        default=10.0,
        help="--grid: more parts (an even number) where a run is longer, so that none measures more than this many seconds "
        "(default 10: a 40 s run is A B B A A B B A; 0: --blocks alone)",
    )
    add(
        "--same-costs",
        choices=["block", "pooled"],
        default="block",
        help="--grid: the 'same' column predicts block k of a run with the costs of block k of the other strategy's run, its neighbour "
        "in time (block, default), or with the costs of all its blocks pooled (pooled, as before)",
    )
    add(
        "--columns",
        default="sim,probe,run,other,same",
        help="--grid: the simulated columns, a comma-separated subset of sim,probe,run,other,same,own (default all but own; e.g. "
        "other,same with --resim; own: 'same' with the run's own costs, a check of the model, not a prediction)",
    )
    add("--live-retries", type=int, default=1, help="--grid: run a live run again, up to N times, if tasks failed or were lost, or seeded "
        "agents' handler times did not follow their draws, and a pair of parts (the strategies' part k) if they kept the "
        "slots busy so differently that they measured two states of the machine (default 1)")
    add(
        "--fresh-draws",
        action="store_true",
        help="--grid: the live agents draw unseeded service times, each run its own (default: seeded, the same draws in each strategy's run)",
    )
    add(
        "--no-intake",
        action="store_true",
        help="--grid: 'same' and 'own' draw the load generator's part per task as before, instead of taking the way into the "
        "router as the other run's track in time (default: the track; a stall bunches the arrivals as live)",
    )
    add(
        "--stalls",
        action="store_true",
        help="--grid: 'same' and 'own' take the agent processes' stalls (wake-ups over two timer ticks) as a track on the way "
        "in's clock, a stall holding every task of its process at once, instead of drawing every wake-up per task (the default)",
    )
    add("--live-warmup", type=float, default=2.0, help="--grid: warm-up seconds per live run (default 2)")
    add("--seed", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    live.exit_on_sigterm()  # so that every process started is stopped (finally blocks)
    if args.grid is not None or args.grid_random:
        return grid(args)
    cal, run_dir = measure(args)
    out = args.out if args.out is not None else run_dir / "calibration.json"
    write(cal, out)
    print(describe(cal))
    print(f"calibration: {out}")
    return 0
