"""``aicp bench --record-overhead``: what recording a trace costs the router, measured in one run.

Routers without and with ``--record`` alternate, three pairs, each under the same
open-loop load (``--rate``, default 1000 tasks/s). Per router it takes throughput and
the router's CPU-seconds per completed task; the result is the median of each, and
the ratios with/without. CPU per task is the figure that matters at a load below
saturation (throughput then equals the offered rate whatever recording costs).

``aicp bench --state-overhead`` runs the same comparison for ``--state`` (the router's
lasting state in SQLite, a fresh file per router; with ``--state-jetstream`` in JetStream KV
on a fresh ``nats-server -js`` per router, whose CPU is reported as role ``nats``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from aicp.lab.bench.live import Fleet, Trial, run_trial, start_system, write_summary

GOAL_THROUGHPUT_LOSS = 0.05


def record_overhead(args: argparse.Namespace, pairs: int = 3, feature: str = "record") -> int:
    """``feature``: "record" (``--record``) or "state" (``--state``)."""
    flag = f"--{feature}"
    rate = args.rate or 1000.0
    run_dir = args.out / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{feature}")
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(f"{flag} overhead at {rate:g} tasks/s open loop, {pairs} pairs of routers (without, with {flag}), {args.duration:g} s each")
    for i in range(pairs):
        for recording in (False, True):
            trace_path = run_dir / f"trace-{i}.jsonl.gz" if recording and feature == "record" else None
            cfg = argparse.Namespace(**{**vars(args), "record": trace_path, "state": recording and feature == "state"})
            fleet = Fleet(run_dir)
            try:
                url = start_system(fleet, "router", cfg)
                r = run_trial(fleet, url, Trial("open", rate=rate, duration=args.duration, warmup=args.warmup), cfg, f"rec{i}-{int(recording)}")
            finally:
                fleet.stop()
            router_cpu = r["cpu"]["router"]["cpu_s"]
            tasks = max(1, r["completed"])
            row = {"pair": i, "recording": recording, "throughput_per_s": r["throughput_per_s"], "router_us_per_task": 1e6 * router_cpu / tasks,
                   "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "lost": r["lost"],
                   "trace_bytes": trace_path.stat().st_size if trace_path is not None and trace_path.exists() else None,
                   "nats_us_per_task": 1e6 * r["cpu"]["nats"]["cpu_s"] / tasks if "nats" in r["cpu"] else None}
            rows.append(row)
            nats = "" if row["nats_us_per_task"] is None else f" (nats-server {row['nats_us_per_task']:.1f})"
            print(f"  pair {i} {'with   ' if recording else 'without'} {flag}: throughput {row['throughput_per_s']:7.1f}/s  "
                  f"router {row['router_us_per_task']:6.1f} us/task{nats}  p50 {row['p50_ms']:.2f}  p99 {row['p99_ms']:.2f} ms  lost {row['lost']}", flush=True)

    def median(recording: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["recording"] is recording)

    base = median(False, "throughput_per_s")
    throughput_ratio = median(True, "throughput_per_s") / base if base else float("nan")
    cpu_ratio = median(True, "router_us_per_task") / median(False, "router_us_per_task")
    summary = {"rate_per_s": rate, "rows": rows, "throughput_ratio": throughput_ratio, "router_cpu_ratio": cpu_ratio,
               "p99_ms": {"without": median(False, "p99_ms"), "with": median(True, "p99_ms")}}
    loss = 1.0 - throughput_ratio
    print(f"median throughput with/without: {throughput_ratio:.3f} ({100 * loss:+.1f}% lost)  router CPU per task with/without: {cpu_ratio:.3f}")
    print(f"  {'PASS' if loss < GOAL_THROUGHPUT_LOSS else 'FAIL'}  {flag} costs under 5% of throughput at {rate:g}/s")
    write_summary(run_dir, summary)
    return 0 if all(r["lost"] == 0 for r in rows) else 1

