"""The "what if" check: does the simulator's answer on recorded traffic hold live?

``python -m aicp.lab.whatif scenarios/whatif.toml [--from round_robin] [--to least_loaded]``
runs the four commands of docs/TRACE.md, printing each, and a table:

1. ``aicp bench --scenario FILE --strategy FROM --record recorded.jsonl.gz``: a live run;
2. ``aicp sim --replay recorded.jsonl.gz --stack-costs --strategy TO --strategy FROM``: the
   prediction (and, for FROM, the simulator checked against the recorded run itself). The
   tasks keep their recorded handler times; ``--stack-costs`` charges the hops and slot
   hand-over read from the recorded trace (never a latency; ``--no-stack-costs``: none);
3. ``aicp bench --arrivals recorded.jsonl.gz --strategy TO --record whatif.jsonl.gz``:
   TO live on the recorded arrivals, with the scenario's agents;
4. the p50 and p99 of each, as the router saw them (trace arrival to outcome: the span
   the simulator measures), and the prediction's error against the live measurement.

The scenario must have one agent group with a constant, exponential or lognormal
(default sigma) service time, since ``--arrivals`` builds its agents from the
``aicp bench`` flags. Figures depend on the machine's load; they are measured, not goals.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aicp.lab import traces
from aicp.sim import scenario as scenario_mod

GOAL = 0.15


def _run(argv: list[str]) -> None:
    print("$ aicp " + " ".join(argv), flush=True)
    rc = subprocess.run([sys.executable, "-m", "aicp", *argv], check=False).returncode
    if rc != 0:
        raise SystemExit(f"aicp {argv[0]} exited with {rc}")


def agent_flags(path: Path) -> list[str]:
    sc = scenario_mod.load(path)
    if len(sc.agents) != 1:
        raise SystemExit(f"{path}: the what-if flow needs one agent group (aicp bench --arrivals makes one)")
    g = sc.agents[0]
    dist = msgspec_tag(g.service_time)
    if dist not in ("constant", "exponential", "lognormal") or getattr(g.service_time, "sigma", 0.5) != 0.5 or g.speed != 1.0 or g.fail_prob:
        raise SystemExit(f"{path}: agents[0] must have a constant, exponential or lognormal (sigma 0.5) service, speed 1, fail_prob 0")
    mean = g.service_time.mean_ms  # type: ignore[union-attr]
    return ["--agents", str(g.count), "--agent-concurrency", str(g.concurrency), "--service-time", f"{dist}:{mean}"]


def msgspec_tag(obj: object) -> str:
    return str(type(obj).__struct_config__.tag)  # type: ignore[attr-defined]


def whatif(scenario: Path, out: Path, src: str, dst: str, stack_costs: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    recorded, rerun = out / "recorded.jsonl.gz", out / "whatif.jsonl.gz"
    _run(["bench", "--scenario", str(scenario), "--strategy", src, "--record", str(recorded), "--out", str(out / "bench")])
    _run(["sim", "--replay", str(recorded), *(["--stack-costs"] if stack_costs else []), "--strategy", dst, "--strategy", src,
          "--out", str(out / "sim"), "--json", str(out / "predicted.json"), "--quiet"])
    _run(["bench", "--arrivals", str(recorded), "--strategy", dst, *agent_flags(scenario), "--record", str(rerun), "--out", str(out / "bench"),
          "--json", str(out / "measured.json")])
    predicted = json.loads((out / "predicted.json").read_text())["results"]
    rows = {
        f"live {src} (recorded)": traces.percentiles(traces.load(recorded).latency_ms()),
        f"sim replay {src}": predicted[src]["latency_ms"],
        f"sim replay {dst} (prediction)": predicted[dst]["latency_ms"],
        f"live {dst} on the same arrivals": traces.percentiles(traces.load(rerun).latency_ms()),
    }
    measured = json.loads((out / "measured.json").read_text())["results"][dst]["latency_ms"]
    print(f"\n{'router-side latency (trace arrive -> end)':44} {'p50 ms':>9} {'p99 ms':>9}")
    for name, lat in rows.items():
        print(f"{name:44} {lat['p50']:9.2f} {lat['p99']:9.2f}")
    print(f"{f'live {dst}, load generator side':44} {measured['p50']:9.2f} {measured['p99']:9.2f}")
    pred, live = rows[f"sim replay {dst} (prediction)"], rows[f"live {dst} on the same arrivals"]
    err = {q: pred[q] / live[q] - 1.0 for q in ("p50", "p99")}
    ok = all(abs(v) <= GOAL for v in err.values())
    print(f"prediction vs live {dst}: p50 {100 * err['p50']:+.1f}%, p99 {100 * err['p99']:+.1f}%  "
          f"({'within' if ok else 'NOT within'} {100 * GOAL:.0f}%)")
    summary = {"rows": rows, "loadgen_side": measured, "error": err, "within_goal": ok}
    (out / "whatif.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", type=Path)
    p.add_argument("--from", dest="src", default="round_robin", help="strategy recorded live (default round_robin)")
    p.add_argument("--to", dest="dst", default="least_loaded", help="strategy predicted, then run live (default least_loaded)")
    p.add_argument("--out", type=Path, default=Path("results") / "whatif", help="folder of the traces and results")
    p.add_argument("--no-stack-costs", action="store_true", help="replay without the stack's costs read from the recorded trace")
    args = p.parse_args(argv)
    whatif(args.scenario, args.out, args.src, args.dst, stack_costs=not args.no_stack_costs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
