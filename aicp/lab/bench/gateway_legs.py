"""Where the gateway's added latency goes: the legs of one task's trip, HTTP next to direct WebSocket, in one run.

``python -m aicp.lab.bench.gateway_legs [--rate 500] [--rounds 3] [--slice 2] [--gateway-baseline TREE]``
starts a router, its agents and ``aicp gateway`` (with ``AICP_GATEWAY_LEGS``, see
aicp.gateway.legs), then runs alternating open-loop slices, direct (the WebSocket load
generator) and through the gateway (the HTTP one), as ``aicp bench --via gateway`` does.
Every reading is ``time.perf_counter()`` (CLOCK_MONOTONIC) in its own process, so the
times of the load generator and of the gateway are comparable. Per leg it prints the
median over the measured tasks (after each slice's warm-up) of:

* direct: ``intended -> sent`` (the schedule's lag), ``sent -> done`` (the load
  generator's task frame built to its result parsed: router and agent round trip);
* gateway: ``intended -> sent``, ``sent -> bytes in`` (the HTTP request on its way into the
  gateway: the client's write, loopback, the gateway's wake-up), ``bytes in -> parsed``,
  ``parsed -> frame`` (checks, the task signed and handed to the link), ``frame -> result``
  (router and agent round trip, seen from the gateway), ``result -> answered`` (the
  result verified and the HTTP answer written), ``answered -> done`` (the answer on its
  way back: loopback, the client's wake-up and parse).

The medians of legs do not add up to the median of the sum; the total is printed too
(``start -> done``, the latency the bench counts). With ``--gateway-baseline TREE`` a
second gateway from another source tree runs in the same rounds, without legs (its tree
may not have them): only its total is printed. Bounded: rounds x slices of ``--slice``
seconds each plus warm-ups. Run it under ``flock /tmp/aicp-bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from aicp import trace as trace_mod
from aicp.lab.bench.live import Fleet, Trial, add_arguments, run_trial, start_system
from aicp.lab.bench.noise import NoiseMeter, format_noise
from aicp.lab.bench.via_gateway import run_http_trial, start_gateway


def load_slice(run_dir: Path, tag: str, warmup: float) -> dict[str, np.ndarray]:
    """A slice's per-task times in perf_counter seconds (absolute), measured part only, completed tasks only."""
    out = run_dir / f"{tag}-gen0.npz"
    data = np.load(out)
    meta = json.loads(Path(str(out) + ".json").read_text())
    t0 = float(meta["start_clock"])
    keep = (data["intended"] >= warmup) & (data["outcome"] == 0)
    got = {k: data[k][keep] + t0 for k in ("intended", "sent", "done")}
    got["start"] = np.minimum(got["intended"], got["sent"])
    for extra in ("task_ids", "opened"):
        if extra in data.files:
            got[extra] = data[extra][keep]
    return got


def ms(x: np.ndarray) -> str:
    """The median in ms, then the 10th, 25th, 75th and 90th percentiles."""
    x = x[~np.isnan(x)]
    if not len(x):
        return "    nan"
    q = 1e3 * np.percentile(x, [50, 10, 25, 75, 90])
    return f"{q[0]:7.3f}  ({q[1]:.3f} {q[2]:.3f} | {q[3]:.3f} {q[4]:.3f})"


def router_times(trace: Path) -> dict[str, tuple[float, float]]:
    """Each task's (arrive, end) in the router's trace, on this process's perf_counter clock (the trace has time.time():
    the offset between the two clocks is taken here, on the same machine). Keyed by task id."""
    offset = time.time() - time.perf_counter()
    arrive: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for ev in trace_mod.parse(trace.read_bytes(), trace.name):  # a torn last line is dropped
        if isinstance(ev, (trace_mod.Arrive, trace_mod.End)):
            tid = ev.task.split("\n", 1)[-1]  # the trace's key is "controller\ntask id"
            if isinstance(ev, trace_mod.Arrive):
                arrive[tid] = ev.t - offset
            elif tid in arrive:
                out[tid] = (arrive[tid], ev.t - offset)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--slice", type=float, default=2.0, help="measured seconds per slice")
    p.add_argument("--slice-warmup", type=float, default=0.5)
    p.add_argument("--gateway-baseline", default=None, metavar="TREE")
    p.add_argument("--lazy-connections", action="store_true", help="also a gateway slice per round whose HTTP load generator opens no "
                   "connection before the clock starts (--connections 0: each opens when a request finds none idle), to see what that costs")
    p.add_argument("--pin", action="append", default=[], metavar="ROLE=CPUS", help="taskset a role (router, agents, gateway, loadgen, *), e.g. gateway=1")
    own, rest = p.parse_known_args()
    bench = argparse.ArgumentParser()
    add_arguments(bench)
    cfg = bench.parse_args(rest)
    cfg.strategy = cfg.strategy or "round_robin"
    run_dir = Path(tempfile.mkdtemp(prefix="aicp-legs-"))
    cfg.record = run_dir / "router-trace.jsonl.gz"  # the router's own times of each task: arrive and end
    legs_file = run_dir / "gateway-legs.json"
    fleet = Fleet(run_dir, cpus=dict(pin.split("=", 1) for pin in own.pin), noise=NoiseMeter())
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    piece = Trial("open", rate=own.rate, duration=own.slice, warmup=own.slice_warmup)
    try:
        router_url = start_system(fleet, "router", cfg)
        os.environ["AICP_GATEWAY_LEGS"] = str(legs_file)
        http_url = start_gateway(fleet, router_url)
        del os.environ["AICP_GATEWAY_LEGS"]
        variants: list[tuple[str, Any, str]] = [("direct", run_trial, router_url), ("gateway", run_http_trial, http_url)]
        if own.gateway_baseline:
            variants.append(("gateway-baseline", run_http_trial, start_gateway(fleet, router_url, "gateway-baseline", own.gateway_baseline)))
        if own.lazy_connections:
            def lazy(fleet: Fleet, url: str, trial: Trial, cfg: argparse.Namespace, tag: str) -> dict[str, Any]:
                return run_trial(fleet, url, trial, cfg, tag, loadgen="aicp.lab.bench.http_loadgen", label="HTTP load generator", extra=("--connections", "0"))

            variants.append(("gateway-lazy", lazy, http_url))
        tags: dict[str, list[str]] = {name: [] for name, _, _ in variants}
        for r in range(own.rounds):
            k = r % len(variants)
            for name, runner, url in variants[k:] + variants[:k]:
                tag = f"legs-{name}-r{r}"
                res = runner(fleet, url, piece, cfg, tag)
                tags[name].append(tag)
                print(f"round {r + 1} {name:16} p50 {res['latency_ms']['p50']:6.2f} ms  [{format_noise(res.get('noise'))}]", flush=True)
        gw = next(proc for proc in fleet.procs if proc.role == "gateway")
        os.killpg(gw.popen.pid, signal.SIGINT)  # it writes its legs on the way out (uvicorn re-raises the signal: SIGTERM would skip atexit)
        gw.popen.wait(timeout=15)
        legs: dict[str, list[float]] = json.loads(legs_file.read_text())
    finally:
        fleet.stop()
    router = router_times(cfg.record)
    cols: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(name: str, leg: str, values: np.ndarray) -> None:
        cols.setdefault(name, {}).setdefault(leg, []).append(values)

    for name, _, _ in variants:
        for tag in tags[name]:
            s = load_slice(run_dir, tag, piece.warmup)
            add(name, "intended->sent", np.maximum(0.0, s["sent"] - s["intended"]))
            add(name, "start->done (total)", s["done"] - s["start"])
            if "opened" in s:
                add(name, "waited for a new connection (share)", s["opened"].astype(float) / 1e3)
                add(name, "  start->done of those", np.where(s["opened"], s["done"] - s["start"], np.nan))
            if name in ("direct", "gateway"):
                at = np.array([router.get(str(t), (np.nan, np.nan)) for t in s["task_ids"]]).reshape(-1, 2)
            if name == "direct":
                add(name, "sent->done (router+agent)", s["done"] - s["sent"])
                add(name, "  sent->router arrive (WS in)", at[:, 0] - s["sent"])
                add(name, "  router arrive->end", at[:, 1] - at[:, 0])
                add(name, "  router end->done (WS out)", s["done"] - at[:, 1])
            elif name == "gateway":
                rows = [legs.get(str(t)) for t in s["task_ids"]]
                ok = np.array([row is not None and row[5] > 0 for row in rows])
                g = np.array([row for row, good in zip(rows, ok) if good]).reshape(-1, 6)
                sent, done = s["sent"][ok], s["done"][ok]
                add(name, "sent->bytes in (HTTP in)", g[:, 0] - sent)
                add(name, "bytes in->parsed (parse)", g[:, 1] - g[:, 0])
                add(name, "parsed->frame (check+sign)", g[:, 2] - g[:, 1])
                add(name, "frame->result (router+agent)", g[:, 4] - g[:, 2])
                at = at[ok]
                add(name, "  frame->router arrive (WS in)", at[:, 0] - g[:, 2])
                add(name, "  router arrive->end", at[:, 1] - at[:, 0])
                add(name, "  router end->result (WS out)", g[:, 4] - at[:, 1])
                add(name, "result->answered (verify+answer)", g[:, 5] - g[:, 4])
                add(name, "answered->done (HTTP out)", done - g[:, 5])
                add(name, "frames written at once (share)", g[:, 3] / 1e3)
    print(f"\nlegs at {own.rate:g}/s, {own.rounds} round(s) of {own.slice:g} s slices, medians in ms (p10 p25 | p75 p90) (loaded machine: compare within this run only)")
    for name, table in cols.items():
        print(f"{name}:")
        for leg, parts in table.items():
            values = np.concatenate(parts)
            shown = f"{1e3 * float(np.mean(values)):7.3f}" if "share" in leg else ms(values)
            print(f"  {leg:34} {shown}   (n={int(np.sum(~np.isnan(values)))})")
    print(f"run dir: {run_dir}")


if __name__ == "__main__":
    main()
