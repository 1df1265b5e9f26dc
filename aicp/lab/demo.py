"""``make demo``: the main job, with embedded defaults.

1. In process: signed tasks routed between a few agents through the real core,
   with one agent failing so failover shows.
2. The simulator: ``aicp compare`` on ``scenarios/baseline.toml``.
3. A short live benchmark: router, agents and load generator as separate processes.
4. The plots.

It ends by printing where the results and plots are.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec

from aicp.inprocess import InProcessHub
from aicp.messages import Error, Result, Task
from aicp.peer import PeerSession
from aicp.protocol import RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity

ROOT = Path(__file__).resolve().parents[2]


def _classify(task: Task) -> dict[str, object]:
    text = str(msgspec.json.decode(task.payload).get("text", "")).lower()
    score = sum(w in text for w in ("good", "great", "love")) - sum(w in text for w in ("bad", "awful", "hate"))
    return {"label": "positive" if score > 0 else "negative" if score < 0 else "neutral"}


def _flaky(task: Task) -> dict[str, object]:
    raise RuntimeError("model not loaded")


def in_process_demo(tasks: int = 12, seed: int = 7, out: Callable[[str], None] = print) -> dict[str, int]:
    """Route signed tasks between three agents and one controller in memory; return outcome counts."""
    rng = random.Random(seed)
    hub = InProcessHub(RouterProtocol(Identity.generate(), Router(RouterConfig(backoff_base_s=0.01), "round_robin", rng)))
    agents = {
        "labelee-1": hub.connect(PeerSession(Identity.generate(), "labelee-1", "agent", ["text.classify"]), handler=_classify),
        "labelee-2": hub.connect(PeerSession(Identity.generate(), "labelee-2", "agent", ["text.classify"]), handler=_classify),
        "flaky-3": hub.connect(PeerSession(Identity.generate(), "flaky-3", "agent", ["text.classify"]), handler=_flaky),
    }
    ctl = hub.connect(PeerSession(Identity.generate(), "ains-control", "controller"))
    out(f"1) in-process: {len(agents)} agents registered with signed challenges: {', '.join(agents)}")
    texts = ["a great product", "awful support", "it arrived on tuesday", "love it", "bad battery", "good value"]
    ids = [ctl.submit("text.classify", {"text": texts[i % len(texts)]}) for i in range(tasks)]
    ids.append(ctl.submit("image.label", {"image_url": "snoop.png"}))
    hub.advance(1.0)
    outcome = Counter[str]()
    for tid in ids:
        res = ctl.outcomes.get(tid)
        if isinstance(res, Result):
            outcome["result"] += 1
            line = f"   task {tid}: verified result from {res.sender}: {msgspec.json.decode(res.payload)}"
        elif isinstance(res, Error):
            outcome[res.code] += 1
            line = f"   task {tid}: error {res.code}: {res.message}"
        else:
            outcome["lost"] += 1
            line = f"   task {tid}: NO OUTCOME"
        out(line)
    stats = hub.proto.router.stats
    out(f"   outcomes: {dict(outcome)}; retries {stats.retries}; frames verified by the router {hub.proto.counters['frames_in']}")
    for snap in hub.proto.router.registry.snapshot():
        out(f"   {snap['agent_id']:10} dispatched {snap['dispatched']:2}  ok {snap['succeeded']:2}  failed {snap['failed']:2}  trust {snap['trust']:.2f}")
    return dict(outcome)


def _step(title: str, argv: list[str]) -> int:
    """Run one ``aicp`` subcommand as its own process, showing its output as it comes."""
    print(f"\n{title}\n$ aicp {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "aicp", *argv], cwd=ROOT)
    print(f"   ({time.monotonic() - t0:.0f} s, exit {rc})", flush=True)
    return rc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="in-process step only")
    parser.add_argument("--bench-duration", type=float, default=1.5, help="seconds per live benchmark trial (default 1.5)")


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    outcome = in_process_demo(args.tasks, args.seed)
    failures = int(outcome.get("lost", 0) != 0)
    if args.quick:
        return failures
    failures += _step("2) simulator: every strategy on the baseline scenario, 95% confidence intervals",
                      ["compare", "scenarios/baseline.toml", "--quiet", "--json", "results/demo/compare-baseline.json"]) != 0
    d = str(args.bench_duration)
    # One short run gives both the verdicts and the latency-throughput curve that `plots` then reuses.
    failures += _step("3) live: router, agents and load generator as separate processes on 127.0.0.1, against the design's targets",
                      ["bench", "--agents", "4", "--agent-procs", "1", "--duration", d, "--warmup", "0.5", "--also-1000", "--baseline",
                       "--sweep", "--sweep-rates", "500,1000,2000,3000,4000", "--json", "results/demo/bench.json"]) != 0
    if importlib.util.find_spec("aicp.lab.plots") is not None:
        failures += _step("4) plots", ["plots"]) != 0
    print(f"\nDone in {time.monotonic() - t0:.0f} s. Results: {ROOT / 'results'} (demo summaries in results/demo/, "
          f"simulator runs in results/<scenario>/, live runs in results/bench/, plots in results/plots/)")
    return 1 if failures else 0
