"""The "what if" check: does the simulator's answer on recorded traffic hold live?

``python -m aicp.lab.whatif scenarios/whatif.toml [--from round_robin] [--to least_loaded]``
runs the commands of docs/TRACE.md, printing each, and a table:

1. ``aicp bench --scenario FILE --strategy FROM --record recorded.jsonl.gz``: a live run;
2. ``aicp sim --replay recorded.jsonl.gz --stack-costs --strategy TO --strategy FROM``: the
   prediction (and, for FROM, the simulator checked against the recorded run itself). The
   tasks keep their recorded handler times; ``--stack-costs`` charges the hops and slot
   hand-over read from the recorded trace (never a latency; ``--no-stack-costs``: none);
3. ``aicp bench --arrivals recorded.jsonl.gz --strategy TO --record whatif.jsonl.gz``:
   TO live on the recorded arrivals, with the scenario's agents;
4. unless ``--no-after``: ``aicp bench --arrivals recorded.jsonl.gz --strategy FROM --record
   recorded-after.jsonl.gz``, FROM once more on the same arrivals right after the TO run,
   replayed as in 2; the prediction is then the mean of the two replays' p50 and p99.
   This machine's speed drifts within minutes, and a prediction from FROM's costs
   before the TO run and after it brackets the TO run in time; nothing of the TO run
   reaches the simulator;
5. the p50 and p99 of each, as the router saw them (trace arrival to outcome: the span
   the simulator measures), and the prediction's error against the live measurement.

The scenario must have one agent group with a constant, exponential or lognormal
service time (a lognormal's sigma passed as ``--service-sigma``), since ``--arrivals``
builds its agents from the ``aicp bench`` flags. Figures depend on the machine's load; they are measured, not goals.
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
    if dist not in ("constant", "exponential", "lognormal") or g.speed != 1.0 or g.fail_prob:
        raise SystemExit(f"{path}: agents[0] must have a constant, exponential or lognormal service, speed 1, fail_prob 0")
    mean = g.service_time.mean_ms  # type: ignore[union-attr]
    sigma = ["--service-sigma", repr(float(g.service_time.sigma))] if isinstance(g.service_time, scenario_mod.LognormalDist) else []
    return ["--agents", str(g.count), "--agent-concurrency", str(g.concurrency), "--service-time", f"{dist}:{mean}", *sigma]


def msgspec_tag(obj: object) -> str:
    return str(type(obj).__struct_config__.tag)  # type: ignore[attr-defined]


def _replay(trace_path: Path, out: Path, name: str, src: str, dst: str, stack_costs: bool) -> dict[str, Any]:
    _run(["sim", "--replay", str(trace_path), *(["--stack-costs"] if stack_costs else []), "--strategy", dst, "--strategy", src,
          "--out", str(out / "sim"), "--json", str(out / f"{name}.json"), "--quiet"])
    return dict(json.loads((out / f"{name}.json").read_text())["results"])


def whatif(scenario: Path, out: Path, src: str, dst: str, stack_costs: bool = True, after: bool = True) -> dict[str, Any]:
    """The check; with ``after``, FROM is recorded again after the TO run and the prediction is the mean of both replays."""
    out.mkdir(parents=True, exist_ok=True)
    recorded, rerun, again = out / "recorded.jsonl.gz", out / "whatif.jsonl.gz", out / "recorded-after.jsonl.gz"
    _run(["bench", "--scenario", str(scenario), "--strategy", src, "--record", str(recorded), "--out", str(out / "bench")])
    _run(["bench", "--arrivals", str(recorded), "--strategy", dst, *agent_flags(scenario), "--record", str(rerun), "--out", str(out / "bench"),
          "--json", str(out / "measured.json")])
    if after:  # the machine drifts: FROM once more on the same arrivals, right after, and the stack's costs of both sides
        _run(["bench", "--arrivals", str(recorded), "--strategy", src, *agent_flags(scenario), "--record", str(again), "--out", str(out / "bench")])
    predicted = _replay(recorded, out, "predicted", src, dst, stack_costs)
    rows = {
        f"live {src} (recorded)": traces.percentiles(traces.load(recorded).latency_ms()),
        f"sim replay {src}": predicted[src]["latency_ms"],
        f"sim replay {dst} (prediction)": predicted[dst]["latency_ms"],
    }
    if after:
        later = _replay(again, out, "predicted-after", src, dst, stack_costs)
        rows[f"live {src} (recorded after)"] = traces.percentiles(traces.load(again).latency_ms())
        rows[f"sim replay {src}, after"] = later[src]["latency_ms"]
        rows[f"sim replay {dst}, after"] = later[dst]["latency_ms"]
        rows[f"sim replay {dst} (prediction)"] = {
            q: (predicted[dst]["latency_ms"][q] + later[dst]["latency_ms"][q]) / 2.0 for q in ("p50", "p99")
        }
    rows[f"live {dst} on the same arrivals"] = traces.percentiles(traces.load(rerun).latency_ms())
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
    p.add_argument("--no-after", action="store_true", help="record FROM once only, before the TO run (no second recording after it)")
    args = p.parse_args(argv)
    whatif(args.scenario, args.out, args.src, args.dst, stack_costs=not args.no_stack_costs, after=not args.no_after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
