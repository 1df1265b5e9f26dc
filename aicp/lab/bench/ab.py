"""Before/after CPU per task by role: ``aicp bench`` on two or more source trees, interleaved.

    python -m aicp.lab.bench.ab 5 before=/tmp/aicp-before after=. -- --duration 5 --warmup 1
    python -m aicp.lab.bench.ab 3 two=. "one=.::--agent-procs 1" -- --duration 6 --warmup 1 --rate 1000
    python -m aicp.lab.bench.ab --trial router_at_half 3 before=/tmp/aicp-before after=. -- --concurrency 64 --half-capacity

A tree may carry bench arguments of its own after ``::`` (split like a shell line), put
after the common ones: two settings of one tree are compared the same way as two trees.
Each run also prints the machine's noise during it (steal share, the bench's sleep-probe
stalls, the cores other processes took) and each role's wait for a CPU (ms per second), so a
tail can be told apart from noise. ``--trial KEY`` reads another trial of the bench's
``summary.json`` than its main one (``router``): ``router_at_half`` (``--half-capacity``) or
``router_at_1000`` (``--also-1000``), for the latency of two trees at one load; CPU per task
is then that trial's.

Each round runs the same bench command once per tree (``PYTHONPATH`` set to the tree, so
its router, agents and load generator run), in turn, so slow drifts of the machine's load
hit every tree alike. It prints each run, the medians, and each tree's median ratio to the
first tree paired by round: on a shared machine the paired ratio is the steadier figure.
A tree is a checkout or ``git archive COMMIT | tar -x -C DIR`` of any commit whose bench
writes ``summary.json`` (all of them do).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROLES = ("router", "agents", "loadgen")


def parse_tree(spec: str) -> tuple[str, str, list[str]]:
    """``name=PATH`` or ``name=PATH::ARGS``: the name, the tree, and its own bench arguments."""
    name, _, rest = spec.partition("=")
    path, _, extra = rest.partition("::")
    return name, path, shlex.split(extra)


def one_run(tree: str, bench_args: list[str], trial_key: str = "router") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
        cmd = [sys.executable, "-m", "aicp", "bench", *bench_args, "--out", tmp, "--json", str(out)]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        if not out.exists():
            raise RuntimeError(f"bench failed in {tree}: {proc.stderr[-2000:]}")
        summary: dict[str, Any] = json.loads(out.read_text())
    trial = summary[trial_key]
    done = trial["completed"]
    row = {role: 1e6 * trial["cpu"][role]["cpu_s"] / done for role in ROLES if role in trial["cpu"]}
    row["total"] = sum(row.values())
    row["throughput"] = trial["throughput_per_s"]
    row["p50_ms"] = trial["latency_ms"]["p50"]
    row["p99_ms"] = trial["latency_ms"]["p99"]
    row["lost"] = float(summary.get("lost_all_trials", trial["lost"]))
    noise = trial.get("noise") or {}
    if noise.get("steal_share") is not None:
        row["steal_pct"] = 100.0 * noise["steal_share"]
    if noise.get("others_cores") is not None:
        row["others_cores"] = noise["others_cores"]
    if "stalls" in noise:
        row["stalls"] = float(noise["stalls"])
        row["stall_max_ms"] = float(noise["stall_max_ms"])
    for role in ROLES:
        v = trial["cpu"].get(role, {})
        if v.get("write_calls") and done:
            row[f"writes_{role}_per_task"] = v["write_calls"] / done
        if v.get("runq_wait_s") is not None and v.get("wall_s"):
            row[f"wait_{role}_ms_per_s"] = 1e3 * v["runq_wait_s"] / v["wall_s"]
    return row


def main(argv: list[str]) -> int:
    trial_key = "router"
    if argv[:1] == ["--trial"] and len(argv) > 1:
        trial_key, argv = argv[1], argv[2:]
    if "--" not in argv or len(argv) < 3:
        print(__doc__)
        return 2
    sep = argv.index("--")
    rounds, trees, bench_args = int(argv[0]), [parse_tree(a) for a in argv[1:sep]], argv[sep + 1 :]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in trees}
    for i in range(rounds):
        for name, path, extra in trees:
            row = one_run(path, [*bench_args, *extra], trial_key)
            rows[name].append(row)
            print(f"round {i} {name:10} " + "  ".join(f"{k} {v:.2f}" if k.endswith(("_ms", "_per_task", "_cores")) else f"{k} {v:.0f}" for k, v in row.items()), flush=True)
    first = trees[0][0]
    print("medians (µs of CPU per task; paired ratio to " + first + ")")
    for name, runs in rows.items():
        cells = []
        for key in (*ROLES, "total"):
            median = statistics.median(r[key] for r in runs)
            ratio = statistics.median(r[key] / b[key] for r, b in zip(runs, rows[first]))
            cells.append(f"{key} {median:.0f} ({ratio:.2f}x)")
        lat = "  ".join(f"{key[:3]} {statistics.median(r[key] for r in runs):.2f} ms ({statistics.median(r[key] / b[key] for r, b in zip(runs, rows[first])):.2f}x)"
                        for key in ("p50_ms", "p99_ms"))
        noise = "  ".join(f"{key} {statistics.median(vals):.2f}" for key in ("steal_pct", "others_cores", *(f"wait_{role}_ms_per_s" for role in ROLES))
                          if (vals := [r[key] for r in runs if key in r]))
        print(f"{name:10} " + "  ".join(cells) + f"  throughput {statistics.median(r['throughput'] for r in runs):.0f}/s  {lat}"
              + f"  lost {sum(r['lost'] for r in runs):.0f}" + (f"  noise (medians): {noise}" if noise else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
