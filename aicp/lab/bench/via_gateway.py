"""``aicp bench --via gateway``: the HTTP gateway next to direct WebSocket submission, in one run.

On the same router and agents it runs, one after the other:

1. open loop at ``--gateway-rate`` (default 500 tasks/s), direct over WebSocket;
2. the same through the gateway (``POST /tasks``, keep-alive HTTP/1.1);
3. closed loop at ``--concurrency`` (saturation), direct;
4. the same through the gateway.

It reports the p50 the gateway adds at that rate (goal: under 1 ms) and the share
of direct throughput it keeps at saturation (goal: at least 50%). The gateway runs
as its own process (``aicp gateway``) and its CPU is reported with the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import urllib.request
from typing import Any

from aicp.lab.bench.live import Fleet, Trial, _wait_port, format_result, free_port, run_trial, summarise

GOAL_ADDED_P50_MS = 1.0
GOAL_THROUGHPUT_SHARE = 0.5


def start_gateway(fleet: Fleet, router_url: str) -> str:
    port = free_port()
    key = fleet.run_dir / "keys" / "gateway.key"
    fleet.spawn("gateway", ["-m", "aicp", "gateway", "--url", router_url, "--port", str(port), "--key", str(key), "--log-level", "WARNING"])
    _wait_port(port, 20)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            if json.loads(resp.read()).get("connected"):
                return url
        time.sleep(0.1)
    raise RuntimeError(f"the gateway at {url} did not connect to {router_url}")


def run_http_trial(fleet: Fleet, http_url: str, trial: Trial, cfg: argparse.Namespace, tag: str) -> dict[str, Any]:
    """``run_trial`` with the HTTP load generator instead of the WebSocket one."""
    fleet.mark_cpu()
    outs, gens = [], []
    for i in range(cfg.loadgens):
        out = fleet.run_dir / f"{tag}-gen{i}.npz"
        outs.append(out)
        args = ["-m", "aicp.lab.bench.http_loadgen", "--url", http_url, "--id", f"{tag}-gen{i}", "--duration", str(trial.duration),
                "--warmup", str(trial.warmup), "--seed", str(cfg.seed + i), "--out", str(out), "--task-timeout", str(cfg.task_timeout)]
        if trial.mode == "open":
            args += ["--rate", str(trial.rate / cfg.loadgens)]
        else:
            args += ["--concurrency", str(max(1, trial.concurrency // cfg.loadgens))]
        gens.append(fleet.spawn("loadgen", args))
    t0 = time.monotonic()
    limit = trial.warmup + trial.duration + cfg.task_timeout + 30.0
    for g in gens:
        g.popen.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
    wall = time.monotonic() - t0
    cpu = fleet.cpu_by_role(wall)
    for g in gens:
        if g.popen.returncode != 0:
            raise RuntimeError(f"HTTP load generator failed (exit {g.popen.returncode}); see {fleet.run_dir}")
    fleet.procs = [p for p in fleet.procs if p.role != "loadgen"]
    return summarise(outs, trial, cpu)


def compare(fleet: Fleet, router_url: str, cfg: argparse.Namespace) -> dict[str, Any]:
    """Run the four trials and judge the two goals; prints as it goes."""
    http_url = start_gateway(fleet, router_url)
    rate = float(cfg.gateway_rate)
    open_trial = Trial("open", rate=rate, duration=cfg.duration, warmup=cfg.warmup)
    closed_trial = Trial("closed", concurrency=cfg.concurrency, duration=cfg.duration, warmup=cfg.warmup)
    out: dict[str, Any] = {}
    for key, name, runner, url, trial in (
        ("direct_open", "direct", run_trial, router_url, open_trial),
        ("gateway_open", "gateway", run_http_trial, http_url, open_trial),
        ("direct_closed", "direct", run_trial, router_url, closed_trial),
        ("gateway_closed", "gateway", run_http_trial, http_url, closed_trial),
    ):
        out[key] = runner(fleet, url, trial, cfg, f"via-{key}")
        print(format_result(name, out[key]), flush=True)
    added = out["gateway_open"]["latency_ms"]["p50"] - out["direct_open"]["latency_ms"]["p50"]
    direct_tp = out["direct_closed"]["throughput_per_s"]
    share = out["gateway_closed"]["throughput_per_s"] / direct_tp if direct_tp else float("nan")
    out["added_p50_ms"] = added
    out["throughput_share"] = share
    out["verdicts"] = [
        {"check": f"goal: gateway adds < {GOAL_ADDED_P50_MS:g} ms at p50 at {rate:g}/s", "pass": added < GOAL_ADDED_P50_MS, "measured": f"+{added:.3f} ms"},
        {"check": f"goal: gateway keeps >= {GOAL_THROUGHPUT_SHARE:.0%} of direct throughput at saturation", "pass": share >= GOAL_THROUGHPUT_SHARE,
         "measured": f"{100 * share:.0f}%"},
    ]
    for v in out["verdicts"]:
        print(f"  {'PASS' if v['pass'] else 'FAIL'}  {v['check']:64} {v['measured']}")
    return out
