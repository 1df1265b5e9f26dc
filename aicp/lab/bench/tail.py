"""Where an open-loop trial's latency goes: each task's time split by hop, from a router trace.

    aicp bench --rate 600 --duration 8 --warmup 2 --record /tmp/run.jsonl
    python -m aicp.lab.bench.tail results/bench/<run-id> /tmp/run.jsonl [--tag router-main]

It joins the load generators' samples (``<tag>-gen*.npz``: each task's id, intended,
sent and done times, and the wall-clock time of their time 0) with the trace the
router recorded (docs/TRACE.md), and splits each measured task's latency into:

* ``send lag``: how late the load generator sent it after its intended time;
* ``to router``: from that send to the router's first ``dispatch`` (the loopback write, the router's wake-up and read, its
  verification and decode, and any wait for a free agent);
* ``at agent``: from that ``dispatch`` to the router's receipt of the last ``result``
  (the router's write, the agent's wake-up, its handler and signature, the router's
  read; retries too);
* ``to requester``: from that ``result`` to the load generator's receipt (the router's
  write, the generator's wake-up and its verification).

The hops add up to the task's latency.

Times in a trace are the router's ``time.time()`` when it handled the frame, so a
stall of the router shows up in the hop that ends at it. The rows compare tasks at
or below the median, between the median and p99, and at or above p99; the tail's
start times show whether slow tasks come alone or in bursts (a pause of a process).

If the run folder's ``summary.json`` lists the stalls of the bench's sleep probe
(``aicp.lab.bench.noise``: the bench process overslept a 5 ms sleep by more than 10 ms,
i.e. the machine took its vCPU away), each row also says what share of its tasks were
in flight during such a stall: a tail made of stalls of the whole machine is not one a
code change removes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aicp import trace

HOPS = ("send lag", "to router", "at agent", "to requester")


@dataclass
class Split:
    """One row per measured task: total latency, the four hops (ms) and the intended time (s from time 0)."""

    total_ms: np.ndarray
    hops_ms: np.ndarray  # shape (tasks, len(HOPS))
    intended_s: np.ndarray
    #: each task's start and end on the wall clock (s), to line tasks up with the machine's stalls
    start_wall: np.ndarray | None = None
    done_wall: np.ndarray | None = None


def router_times(events: Sequence[trace.TraceEvent]) -> dict[str, tuple[float, float, float, float]]:
    """Per task key: (arrive, first dispatch, last result, end) on the router's clock; only tasks with all four."""
    seen: dict[str, list[float]] = {}
    for e in events:
        if isinstance(e, trace.Arrive):
            seen[e.task] = [e.t, np.nan, np.nan, np.nan]
        elif isinstance(e, (trace.Dispatch, trace.Reply, trace.End)) and e.task in seen:
            row = seen[e.task]
            if isinstance(e, trace.Dispatch):
                if row[1] != row[1]:
                    row[1] = e.t
            elif isinstance(e, trace.Reply):
                row[2] = e.t
            else:
                row[3] = e.t
    return {k: (a, d, r, n) for k, (a, d, r, n) in seen.items() if d == d and r == r and n == n}


def split(run_dir: Path, events: Sequence[trace.TraceEvent], tag: str) -> Split:
    """Join the samples of ``<tag>-gen*.npz`` in ``run_dir`` with the router's events; tasks before the warm-up are left out."""
    times = router_times(events)
    rows: list[tuple[float, float, float, float, float, float, float, float]] = []
    gens = sorted(run_dir.glob(f"{tag}-gen*.npz"))
    if not gens:
        raise FileNotFoundError(f"no {tag}-gen*.npz in {run_dir}")
    for path in gens:
        meta = json.loads(Path(str(path) + ".json").read_text())
        if "start_wall" not in meta:
            raise ValueError(f"{path}: written by a load generator that does not record task ids (before this tool)")
        t0, warmup = float(meta["start_wall"]), float(meta["warmup_s"])
        with np.load(path) as d:
            ids, intended, sent, done = d["task_ids"], d["intended"], d["sent"], d["done"]
        for tid, it, st, dn in zip(ids.tolist(), intended.tolist(), sent.tolist(), done.tolist()):
            got = times.get(f"{meta['id']}\n{tid}")
            if got is None or it < warmup or dn != dn:
                continue
            _, dispatch, result, _ = (x - t0 for x in got)
            start = min(it, st)  # latency as aicp bench measures it: from the intended time, or an earlier send
            rows.append((dn - start, st - start, dispatch - st, result - dispatch, dn - result, it, t0 + start, t0 + dn))
    a = np.array(rows, dtype=np.float64).reshape(-1, 8)
    return Split(1e3 * a[:, 0], 1e3 * a[:, 1:5], a[:, 5], a[:, 6], a[:, 7])


def stalls_of_run(run_dir: Path) -> np.ndarray | None:
    """The sleep probe's stalls from the run's ``summary.json``: rows of (wall-clock end, ms), sorted; None if it has none."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    listed = (summary.get("noise") or {}).get("stall_list")
    if listed is None:
        return None
    return np.array(sorted(listed), dtype=np.float64).reshape(-1, 2)


def in_a_stall(s: Split, stalls: np.ndarray) -> np.ndarray:
    """For each task, whether a stall overlapped its time in flight. Stalls are disjoint (one thread's
    sleeps, one after another), so the first stall ending after a task's start is the only one to check: O(log n) a task."""
    if s.start_wall is None or s.done_wall is None or stalls.size == 0:
        return np.zeros(s.total_ms.size, dtype=bool)
    ends = stalls[:, 0]
    begins = ends - stalls[:, 1] / 1e3
    i = np.searchsorted(ends, s.start_wall)
    hit = i < ends.size
    j = np.minimum(i, ends.size - 1)
    return hit & (begins[j] <= s.done_wall)


def report(s: Split, stalls: np.ndarray | None = None) -> list[str]:
    """Mean hop times for the fast half, the middle and the tail; the tail's start times; with ``stalls``, each row's share of
    tasks in flight during one."""
    if s.total_ms.size == 0:
        return ["no task could be joined with the trace"]
    p50, p99 = np.percentile(s.total_ms, [50, 99])
    lines = [f"{s.total_ms.size} tasks: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {s.total_ms.max():.2f} ms; mean ms per hop:",
             f"{'':10} {'total':>8} " + " ".join(f"{h:>12}" for h in HOPS) + ("  in a stall" if stalls is not None else "")]
    groups = (("<= p50", s.total_ms <= p50), ("p50-p99", (s.total_ms > p50) & (s.total_ms < p99)), (">= p99", s.total_ms >= p99))
    stalled = in_a_stall(s, stalls) if stalls is not None else None
    for label, sel in groups:
        if sel.any():
            lines.append(f"{label:10} {s.total_ms[sel].mean():8.2f} " + " ".join(f"{s.hops_ms[sel, i].mean():12.2f}" for i in range(len(HOPS)))
                         + (f"  {100 * stalled[sel].mean():10.0f}%" if stalled is not None else ""))
    tail = s.total_ms >= p99
    starts = np.sort(s.intended_s[tail])
    bursts = int(np.sum(np.diff(starts) > 0.05)) + 1 if starts.size else 0
    lines.append(f"the {int(tail.sum())} tasks >= p99 started in {bursts} burst(s) (gaps > 50 ms): " + ", ".join(f"{t:.2f}" for t in starts[:40]) + " s")
    if stalls is not None and s.start_wall is not None and s.done_wall is not None:
        window = (stalls[:, 0] >= s.start_wall.min()) & (stalls[:, 0] - stalls[:, 1] / 1e3 <= s.done_wall.max())
        lines.append(f"the bench's 5 ms sleep probe stalled {int(window.sum())} time(s) > 10 ms while these tasks ran "
                     f"(total {stalls[window, 1].sum():.0f} ms, max {stalls[window, 1].max(initial=0.0):.0f} ms); "
                     "'in a stall': share of the row's tasks in flight during one")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the bench's run folder (results/bench/<run-id>)")
    p.add_argument("trace", type=Path, help="the trace the router recorded (aicp bench --record FILE)")
    p.add_argument("--tag", default="router-main", help="which trial: router-main (default), router-half, router-1000")
    args = p.parse_args(argv)
    events = list(trace.parse(args.trace.read_bytes(), str(args.trace)))
    for line in report(split(args.run_dir, events, args.tag), stalls_of_run(args.run_dir)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
