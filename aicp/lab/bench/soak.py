"""``aicp soak`` (``make soak``): minutes at half the measured capacity, with agents killed and restarted.

It starts a router, ``--agents`` agent processes (one agent each, so each can be killed
on its own) and one open-loop load generator, all on 127.0.0.1. Unless ``--rate`` is
given, a short closed-loop run measures capacity first and the soak offers half of it.
During the run a seeded chaos loop SIGKILLs a random agent every ``--kill-every``
seconds on average (always leaving one alive) and restarts it under the same id after
about ``--down`` seconds.

Reported: tasks completed, errors by code, lost (sent but never answered: must be 0),
duplicate outcomes (must be 0), the router's own accounting (every task it accepted
ended), and the router's RSS at the start, the end and its peak. Everything goes to
``results/soak/<run-id>/summary.json`` with the chaos log. Exit status 1 if anything
was lost or duplicated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from aicp import __version__
from aicp.lab.bench.live import (
    METHOD,
    Fleet,
    Proc,
    Trial,
    _agents_ready,
    _wait_port,
    free_port,
    run_trial,
    summarise,
    write_summary,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--duration", type=float, default=180.0, help="soak seconds (default 180)")
    add("--rate", type=float, default=0.0, help="offered tasks/s (default: half the capacity measured first)")
    add("--measure", type=float, default=4.0, help="seconds of the closed-loop capacity run (default 4)")
    add("--measure-concurrency", type=int, default=64, help="tasks in flight during the capacity run (default 64)")
    add("--agents", type=int, default=4, help="agent processes, one agent each (default 4)")
    add("--agent-concurrency", type=int, default=64, help="tasks each agent runs at once (default 64)")
    add("--service-time", default="exponential:2", help="synthetic service time [DIST:]MS (default exponential:2)")
    add("--kill-every", type=float, default=10.0, metavar="S", help="mean seconds between agent kills (default 10)")
    add("--down", type=float, default=1.5, metavar="S", help="mean seconds a killed agent stays down (default 1.5)")
    add("--task-timeout", type=float, default=10.0, help="each task's deadline in seconds (default 10)")
    add("--warmup", type=float, default=1.0, help="seconds of load before the soak's measured window (default 1)")
    add("--seed", type=int, default=1, help="seed of the chaos loop and the load generator (default 1)")
    add("--out", type=Path, default=Path("results") / "soak", help="parent folder of the run folder")
    add("--json", type=Path, default=None, help="also write the summary to this file")


def _rss(proc: Proc) -> int:
    try:
        return int(proc.ps.memory_info().rss)
    except Exception:  # psutil.Error: the router died; reported as 0
        return 0


def _metrics(http: str) -> dict[str, float]:
    """The router's /metrics as ``name{label="v"}`` -> value."""
    with urllib.request.urlopen(http + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _outcomes(out: Path) -> Counter[str]:
    """Every task the load generator sent, warm-up included, by outcome: "ok", an error code, or "lost"."""
    names = ["lost", *json.loads(Path(str(out) + ".json").read_text())["codes"]]
    return Counter(names[int(i) + 1] for i in np.load(out)["outcome"])


class Chaos:
    """Kills and restarts agent processes at seeded random times."""

    def __init__(self, fleet: Fleet, url: str, args: argparse.Namespace, t0: float) -> None:
        self.fleet = fleet
        self.url = url
        self.args = args
        self.t0 = t0
        self.rng = random.Random(args.seed)
        self.alive: dict[str, Proc] = {}
        self.down: dict[str, float] = {}  # agent id -> when to restart it
        self.log: list[dict[str, Any]] = []
        self.next_kill = t0 + self._gap()

    def _gap(self) -> float:
        return self.rng.expovariate(1.0 / self.args.kill_every) if self.args.kill_every > 0 else float("inf")

    def spawn(self, agent_id: str) -> None:
        a = self.args
        self.alive[agent_id] = self.fleet.spawn("agent", ["-m", "aicp", "agent", "--url", self.url, "--capability", METHOD, "--handler", "synthetic",
                                                          "--id", agent_id, "--service-time", a.service_time, "--concurrency", str(a.agent_concurrency),
                                                          "--seed", str(self.rng.randrange(1 << 30)), "--log-level", "WARNING"])

    def step(self, now: float, killing: bool) -> None:
        for agent_id, when in list(self.down.items()):
            if now >= when or not killing:
                del self.down[agent_id]
                self.spawn(agent_id)
                self.log.append({"t": round(now - self.t0, 3), "event": "restart", "agent": agent_id})
        if killing and now >= self.next_kill:
            self.next_kill = now + self._gap()
            if len(self.alive) >= 2:
                agent_id = self.rng.choice(sorted(self.alive))
                proc = self.alive.pop(agent_id)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
                self.down[agent_id] = now + self.rng.uniform(0.5, 1.5) * self.args.down
                self.log.append({"t": round(now - self.t0, 3), "event": "kill", "agent": agent_id})


def run(args: argparse.Namespace) -> int:
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    run_dir = args.out / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"run_id": run_id, "version": __version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                               "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}}
    print(f"AICP {__version__} soak {run_id}: {args.agents} agents, service {args.service_time}, {args.duration:g} s, "
          f"a kill every ~{args.kill_every:g} s (seed {args.seed})", flush=True)
    fleet = Fleet(run_dir)
    status = 1
    try:
        port = free_port()
        url, http = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        router = fleet.spawn("router", ["-m", "aicp.server", "--port", str(port), "--log-level", "WARNING", "--rate", "1000000"])
        _wait_port(port, 15)
        chaos = Chaos(fleet, url, args, time.monotonic())
        for i in range(args.agents):
            chaos.spawn(f"soak-{i}")
        _agents_ready(http, args.agents, 30)
        summary["router_rss_start_bytes"] = _rss(router)

        rate = args.rate
        if not rate:
            cfg = argparse.Namespace(loadgens=1, seed=args.seed, task_timeout=args.task_timeout)
            cap = run_trial(fleet, url, Trial("closed", concurrency=args.measure_concurrency, duration=args.measure, warmup=1.0), cfg, "capacity")
            summary["capacity"] = {k: cap[k] for k in ("throughput_per_s", "latency_ms", "completed", "errors", "lost")}
            rate = max(1.0, 0.5 * cap["throughput_per_s"])
            print(f"capacity {cap['throughput_per_s']:.0f} tasks/s (closed loop, {args.measure_concurrency} in flight): soaking at {rate:.0f}/s", flush=True)
        summary["rate_per_s"] = rate

        out = run_dir / "soak-gen0.npz"
        gen = fleet.spawn("loadgen", ["-m", "aicp.lab.bench.loadgen", "--url", url, "--id", "soak-gen0", "--rate", str(rate), "--duration", str(args.duration),
                                      "--warmup", str(args.warmup), "--seed", str(args.seed), "--out", str(out), "--task-timeout", str(args.task_timeout)])
        t0 = time.monotonic()
        chaos.t0, chaos.next_kill = t0, t0 + args.warmup + chaos._gap()
        load_end = t0 + args.warmup + args.duration
        limit = load_end + args.task_timeout + 30.0
        rss_peak = summary["router_rss_start_bytes"]
        next_report = t0 + 30.0
        while gen.popen.poll() is None:
            now = time.monotonic()
            if now > limit:
                raise RuntimeError(f"the load generator did not finish within {limit - t0:.0f} s")
            chaos.step(now, killing=now < load_end)
            rss_peak = max(rss_peak, _rss(router))
            if now >= next_report:
                next_report += 30.0
                kills = sum(e["event"] == "kill" for e in chaos.log)
                print(f"  {now - t0:5.0f} s: {kills} kills, router RSS {_rss(router) / 2**20:.1f} MiB", flush=True)
            time.sleep(0.05)
        chaos.step(time.monotonic(), killing=False)  # restart anyone still down
        if gen.popen.returncode != 0:
            raise RuntimeError(f"load generator failed (exit {gen.popen.returncode}); see {run_dir}")
        fleet.procs = [p for p in fleet.procs if p.role != "loadgen"]
        result = summarise([out], Trial("open", rate=rate, duration=args.duration, warmup=args.warmup), {})
        counts = _outcomes(out)
        result["completed"] = counts.pop("ok", 0)
        result["errors"] = dict(sorted((code, n) for code, n in counts.items() if code != "lost"))
        assert counts.get("lost", 0) == result["lost"]
        metrics = _metrics(http)
        summary["router_rss_end_bytes"] = _rss(router)
        summary["router_rss_peak_bytes"] = max(rss_peak, summary["router_rss_end_bytes"])
        accepted = metrics.get("aicp_tasks_submitted_total", 0.0)
        ended = sum(v for k, v in metrics.items() if k.startswith("aicp_tasks_total{"))
        summary.update({
            "submitted": result["submitted"], "completed": result["completed"], "errors": result["errors"], "lost": result["lost"],
            "duplicate_outcomes": result["duplicate_outcomes"], "verify_failures": result["verify_failures"],
            "throughput_per_s": result["throughput_per_s"], "latency_ms": result["latency_ms"],
            "kills": sum(e["event"] == "kill" for e in chaos.log), "restarts": sum(e["event"] == "restart" for e in chaos.log),
            "router": {"accepted": accepted, "ended": ended, "in_flight_at_end": metrics.get("aicp_tasks_in_flight", -1.0),
                       "retries": metrics.get("aicp_retries_total", 0.0), "agents_lost": metrics.get("aicp_agents_lost_total", 0.0)},
        })
        summary["chaos"] = chaos.log
        router_ok = accepted == ended and summary["router"]["in_flight_at_end"] == 0
        ok = result["lost"] == 0 and result["duplicate_outcomes"] == 0 and result["verify_failures"] == 0 and router_ok
        status = 0 if ok else 1
        mib = 2**20
        print(f"soak: {result['submitted']} sent at {rate:.0f}/s, completed {result['completed']}, errors {result['errors'] or 0}, "
              f"lost {result['lost']}, duplicates {result['duplicate_outcomes']}; {summary['kills']} kills, {summary['restarts']} restarts; "
              f"router accepted {accepted:.0f}, ended {ended:.0f}; router RSS {summary['router_rss_start_bytes'] / mib:.1f} MiB at start, "
              f"{summary['router_rss_end_bytes'] / mib:.1f} MiB at end, {summary['router_rss_peak_bytes'] / mib:.1f} MiB peak", flush=True)
        print("PASS: nothing lost" if ok else "FAIL: tasks lost, duplicated, or unaccounted for at the router", flush=True)
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        print(f"soak failed: {summary['error']}", file=sys.stderr)
        status = 1
    finally:
        fleet.stop()
    summary["exit_status"] = status
    write_summary(run_dir, summary, args.json)
    return status
