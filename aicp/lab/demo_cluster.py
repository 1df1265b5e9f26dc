"""``make demo-cluster`` (``python -m aicp.lab.demo_cluster``): three routers over NATS, one killed under load.

Starts a nats-server, three routers (``aicp serve --cluster``) and agent processes
(each with every router's URL, its own router first), then runs a short open load
from one controller per router (each with every URL) and SIGKILLs the second
router in the middle. Its agents and its controller move to another router, tasks
that other routers had sent through it fail over, and every task must end with
exactly one outcome. Prints the outcome table; exits 1 if a task was lost or
answered twice.

Every process's log and the agents' keys go to a run folder (``/tmp/aicp-demo-cluster-*``). It is removed when
the demo succeeds; it is kept, and its path printed, when the demo fails or is interrupted, or when asked with
``--keep`` or ``AICP_DEMO_KEEP=1`` (``make demo-cluster KEEP=1``). Every process started is stopped, also on
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aicp import errors
from aicp.lab.bench.cluster import healthz, start_nats, start_router, wait_cluster
from aicp.lab.bench.live import METHOD, Fleet, _agents_ready, exit_on_sigterm
from aicp.live.controller import AICPController
from aicp.messages import Error, Result, decode_body, decode_frame


class CountingController(AICPController):
    """Counts every outcome frame it receives by task id, also those nobody waits for any more."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: collections.Counter[str] = collections.Counter()

    def _frame(self, data: bytes) -> None:
        with contextlib.suppress(errors.ProtocolError):
            body = decode_body(decode_frame(data).body)
            if isinstance(body, (Result, Error)) and body.task_id is not None:
                self.frames[body.task_id] += 1
        super()._frame(data)


async def drive(urls: list[str], rate: float, duration: float, kill_at: float, kill: Any) -> dict[str, Any]:
    ctls = []
    for i in range(len(urls)):
        ctl = CountingController(urls[i:] + urls[:i], f"demo-ctl-{i}", backoff_base_s=0.05, backoff_cap_s=0.5)
        await ctl.start(retry=True)
        ctls.append(ctl)
    codes: collections.Counter[str] = collections.Counter()
    ids: list[tuple[CountingController, str]] = []

    async def one(ctl: CountingController, tid: str) -> None:
        try:
            await ctl.submit(METHOD, {"id": tid}, timeout=10.0, task_id=tid)
            codes["completed"] += 1
        except errors.TaskError as exc:
            codes[exc.code] += 1

    loop = asyncio.get_running_loop()
    tasks = []
    start = time.monotonic()
    killed = False
    n = 0
    period = len(ctls) / rate
    while time.monotonic() - start < duration and n < 100_000:  # bounded in time and count
        for ctl in ctls:
            tid = f"{ctl.peer_id}-{n}"
            ids.append((ctl, tid))
            tasks.append(loop.create_task(one(ctl, tid)))
        n += 1
        if not killed and time.monotonic() - start >= kill_at:
            kill()
            killed = True
        await asyncio.sleep(period)
    await asyncio.gather(*tasks)
    counts = [ctl.frames[tid] for ctl, tid in ids]
    moved = [ctl.peer_id for ctl in ctls if ctl.server_url != ctl.urls[0]]
    for ctl in ctls:
        await ctl.close()
    return {"submitted": len(ids), "codes": codes, "lost": sum(1 for c in counts if c == 0), "duplicates": sum(1 for c in counts if c > 1),
            "moved": moved}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m aicp.lab.demo_cluster", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=150.0, help="tasks/s over all controllers (default 150)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load (default 6); the kill comes at a third")
    parser.add_argument("--agents-per-router", type=int, default=2)
    parser.add_argument("--service-time", default="constant:20")
    parser.add_argument("--keep", action="store_true", default=os.environ.get("AICP_DEMO_KEEP", "") not in ("", "0"),
                        help="keep the run folder (logs, keys) also when the demo succeeds (default: kept only on failure; "
                             "also AICP_DEMO_KEEP=1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()  # so that the finally blocks stop every process started
    run_dir = Path(tempfile.mkdtemp(prefix="aicp-demo-cluster-"))
    ok = False
    try:
        ok = run(args, run_dir)
    finally:  # also on an exception, SIGTERM or Ctrl-C: then ok is False and the folder stays
        settle_run_dir(run_dir, ok, args.keep)
    return 0 if ok else 1


def settle_run_dir(run_dir: Path, ok: bool, keep: bool) -> None:
    """Remove the run folder after a success unless ``keep``; otherwise say where it is."""
    if ok and not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run folder kept: {run_dir} (logs and keys; remove it when done)", flush=True)


def run(args: argparse.Namespace, run_dir: Path) -> bool:
    """The demo with its processes' logs in ``run_dir``; True if every task ended exactly once. Stops every process it started."""
    cfg = argparse.Namespace(strategy="least_loaded", verify="every-hop", agents=3 * args.agents_per_router, service_time=args.service_time,
                             agent_concurrency=4)
    fleet = Fleet(run_dir)
    print(f"run folder {run_dir} (logs, keys): removed if the demo succeeds, unless --keep", flush=True)
    try:
        nats = start_nats(fleet)
        print(f"nats-server at {nats}")
        routers = [start_router(fleet, cfg, f"router-r{i + 1}", nats, f"r{i + 1}") for i in range(3)]
        urls = [u for u, _ in routers]
        for i, (_, http) in enumerate(routers):
            order = urls[i:] + urls[:i]
            fleet.spawn("agents", ["-m", "aicp", "agent", "--url", ",".join(order), "--capability", METHOD, "--handler", "synthetic",
                                   "--count", str(args.agents_per_router), "--id", f"demo-r{i + 1}", "--service-time", args.service_time,
                                   "--concurrency", "4", "--heartbeat", "1", "--log-level", "WARNING"])
            _agents_ready(http, args.agents_per_router, 60.0)
        wait_cluster([h for _, h in routers])
        print(f"3 routers {', '.join(urls)}, {args.agents_per_router} agents each; load {args.rate:.0f} tasks/s for {args.duration:g} s, "
              f"router r2 SIGKILLed at {args.duration / 3:.1f} s")
        victim = next(p for p in fleet.procs if p.role == "router-r2")

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(victim.popen.pid, signal.SIGKILL)
            print("  ... router r2 killed (SIGKILL)", flush=True)

        out = asyncio.run(drive(urls, args.rate, args.duration, args.duration / 3, kill))
        survivors = {f"r{i + 1}": healthz(h)["cluster"] for i, (_, h) in enumerate(routers) if i != 1}
    finally:
        fleet.stop()
    codes = out["codes"]
    failed = {k: v for k, v in codes.items() if k != "completed"}
    print()
    print(f"{'submitted':>10} {'completed':>10} {'failed':>8} {'lost':>6} {'duplicates':>11}   failed by code")
    print(f"{out['submitted']:10d} {codes['completed']:10d} {sum(failed.values()):8d} {out['lost']:6d} {out['duplicates']:11d}   {failed or '-'}")
    print(f"controllers that moved to another router: {', '.join(out['moved']) or 'none'}")
    for name, c in survivors.items():
        print(f"{name}: forwarded out {c['tasks_forwarded_out']}, in {c['tasks_forwarded_in']}, routers lost {c['routers_lost']}, hears {c['routers']}")
    ok = out["lost"] == 0 and out["duplicates"] == 0 and sum(codes.values()) == out["submitted"]
    print("every task ended exactly once" if ok else "FAIL: a task was lost or answered twice", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
