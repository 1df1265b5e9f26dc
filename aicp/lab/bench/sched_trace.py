"""Who kept each role off a CPU during ``aicp bench``: the kernel's scheduler trace, role by role.

    sudo python -m aicp.lab.bench.sched_trace record /tmp/st -- --rate 1060 --duration 8 --warmup 2
    python -m aicp.lab.bench.sched_trace report /tmp/st

``record`` runs ``aicp bench`` with the given arguments while a private tracefs instance
(``/sys/kernel/tracing/instances/aicp-PID``; root, Linux) records every ``sched_switch``
and ``sched_wakeup``, and removes the instance afterwards. ``report`` reads the trace and
the pids the bench wrote in its ``summary.json`` (``pids``: its own and each role's) and,
over the time its load generators ran, says for each role:

* how often one of its threads was ready to run but not running (woken, or preempted
  while runnable), and how long each such wait lasted (p50, p99, max, total a second);
* what the CPUs ran while it waited, time-weighted: another role of the bench, the bench
  itself, ``idle`` (a CPU was free: the wait was the scheduler's choice, not a shortage),
  or ``other``: any process outside the bench.

``aicp bench``'s run-queue wait (``/proc/PID/schedstat``) says how long a role waited;
this says behind whom. On 28 Nov 2026 it showed that other sessions' ``nice -n 19`` jobs
ran during 25-67% of the router's waits (``sched_autogroup`` schedules each session as one
group of equal weight, whatever its processes' nice values), and that at 1060 tasks/s the
agents waited mostly behind the router and the router behind the agents and the load
generator. Cost: O(events × roles' threads waiting at once); a 10 s trial at 1000 tasks/s
is about 100,000 events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = "sched:sched_switch sched:sched_wakeup sched:sched_wakeup_new"

_SWITCH = re.compile(r"-(\d+)\s+\[(\d+)\].*?\s(\d+\.\d+): sched_switch: .*prev_pid=(\d+) .*prev_state=(\S+) ==> .*next_pid=(\d+) ")
_WAKEUP = re.compile(r"-(\d+)\s+\[\d+\].*?\s(\d+\.\d+): sched_wakeup(_new)?: .*pid=(\d+) ")


@dataclass(frozen=True)
class Switch:
    """CPU ``cpu`` stopped running ``prev`` (left in ``prev_state``: ``R``/``R+`` still runnable) and started ``next``."""

    t: float
    cpu: int
    prev: int
    prev_state: str
    next: int


@dataclass(frozen=True)
class Wakeup:
    """``pid`` became runnable at ``t``, woken by ``by`` (``new``: a new thread or process ``by`` made)."""

    t: float
    pid: int
    by: int
    new: bool


def parse(lines: Iterable[str]) -> Iterator[Switch | Wakeup]:
    """The events of a tracefs ``trace`` text, in its order; other lines are skipped."""
    for line in lines:
        if "sched_switch:" in line:
            if m := _SWITCH.search(line):
                yield Switch(float(m.group(3)), int(m.group(2)), int(m.group(4)), m.group(5), int(m.group(6)))
        elif m := _WAKEUP.search(line):
            yield Wakeup(float(m.group(2)), int(m.group(4)), int(m.group(1)), m.group(3) is not None)


@dataclass
class RoleWaits:
    """One role's waits for a CPU (seconds each) and, for all of them together, what ran meanwhile (seconds by role)."""

    waits: list[float] = field(default_factory=list)
    behind: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def roles_of(events: list[Switch | Wakeup], pids: dict[str, list[int]]) -> dict[int, str]:
    """Thread id -> role: the bench's pids, and the threads those processes made (a process the bench
    spawned is in ``pids`` itself, so it keeps its own role)."""
    roles = {pid: role for role, listed in pids.items() for pid in listed}
    for e in events:
        if isinstance(e, Wakeup) and e.new and e.pid not in roles and e.by in roles:
            roles[e.pid] = roles[e.by]
    return roles


def window_of(events: list[Switch | Wakeup], roles: dict[int, str], role: str = "loadgen") -> tuple[float, float] | None:
    """From the first to the last event of any thread of ``role`` (the load generators: the trials)."""
    times = [e.t for e in events if isinstance(e, Switch) and (roles.get(e.prev) == role or roles.get(e.next) == role)]
    return (min(times), max(times)) if times else None


def attribute(events: list[Switch | Wakeup], roles: dict[int, str], window: tuple[float, float] | None = None) -> dict[str, RoleWaits]:
    """Each role's waits for a CPU inside ``window`` and what the CPUs ran during them (see the module's docstring)."""
    lo, hi = window if window is not None else (float("-inf"), float("inf"))
    out: dict[str, RoleWaits] = defaultdict(RoleWaits)
    ready: dict[int, float] = {}  # our threads runnable but not running -> since when
    last: dict[int, float] = {}  # cpu -> time of its last switch
    running: dict[int, int] = {}  # cpu -> the thread it switched to then

    def behind(pid: int, ran: int, begin: float, end: float) -> None:
        begin, end = max(begin, lo), min(end, hi)
        if end > begin:
            out[roles[pid]].behind["idle" if ran == 0 else roles.get(ran, "other")] += end - begin

    for e in events:
        if isinstance(e, Wakeup):
            if e.pid in roles and e.pid not in ready:
                ready[e.pid] = e.t
            continue
        if e.cpu in last:  # this CPU ran e.prev since its last switch: every waiting thread waited behind it
            for pid, since in ready.items():
                behind(pid, e.prev, max(last[e.cpu], since), e.t)
        waited_from = ready.pop(e.next, None)
        if waited_from is not None:  # e.next's wait ends: what the other CPUs have been running meanwhile
            for cpu, began in last.items():
                if cpu != e.cpu:
                    behind(e.next, running[cpu], max(began, waited_from), e.t)
            if lo <= waited_from and e.t <= hi:
                out[roles[e.next]].waits.append(e.t - waited_from)
        last[e.cpu] = e.t
        running[e.cpu] = e.next
        if e.prev in roles and e.prev_state.startswith("R"):
            ready[e.prev] = e.t  # preempted: still runnable
    return dict(out)


def report(out: dict[str, RoleWaits], seconds: float) -> list[str]:
    lines = [f"over {seconds:.1f} s of trials; waits for a CPU (ready to run, not running), and what the CPUs ran meanwhile:"]
    for role in sorted(out):
        r = out[role]
        if not r.waits:
            continue
        w = np.array(r.waits) * 1e3
        total = sum(r.behind.values())
        ranked = sorted(r.behind.items(), key=lambda kv: -kv[1])
        behind = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in ranked) if total > 0 else "-"
        lines.append(f"  {role:8} {w.size:6} waits  p50 {np.percentile(w, 50):.3f}  p99 {np.percentile(w, 99):.2f}  max {w.max():.1f} ms  "
                     f"{w.sum() / seconds:.0f} ms/s;  behind: {behind}")
    return lines


def record(out_dir: Path, bench_args: list[str]) -> int:
    """Run ``aicp bench`` with ``bench_args`` under a private tracefs instance; the trace, output and summary go to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inst = TRACEFS / "instances" / f"aicp-{os.getpid()}"
    inst.mkdir()
    try:
        (inst / "buffer_size_kb").write_text("40000")
        (inst / "set_event").write_text(EVENTS)
        (inst / "tracing_on").write_text("1")
        with open(out_dir / "bench.txt", "w") as log:
            code = subprocess.call([sys.executable, "-m", "aicp", "bench", *bench_args, "--out", str(out_dir / "res"),
                                    "--json", str(out_dir / "summary.json")], stdout=log, stderr=subprocess.STDOUT)
        (inst / "tracing_on").write_text("0")
        with open(inst / "trace") as src, open(out_dir / "sched.txt", "w") as dst:
            for chunk in iter(lambda: src.read(1 << 20), ""):
                dst.write(chunk)
    finally:
        with contextlib.suppress(OSError):
            (inst / "tracing_on").write_text("0")
        with contextlib.suppress(OSError):
            (inst / "set_event").write_text("")
        inst.rmdir()
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("record", "report"))
    p.add_argument("dir", type=Path, help="where record writes (sched.txt, summary.json, bench.txt) and report reads")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="record: -- then aicp bench's arguments")
    args = p.parse_args(argv)
    if args.action == "record":
        code = record(args.dir, args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args)
        print((args.dir / "bench.txt").read_text(), end="")
        if code != 0:
            return code
    pids = json.loads((args.dir / "summary.json").read_text())["pids"]
    with open(args.dir / "sched.txt") as f:
        events = list(parse(f))
    roles = roles_of(events, pids)
    window = window_of(events, roles)
    if window is None:
        print("no load generator in the trace")
        return 1
    for line in report(attribute(events, roles, window), window[1] - window[0]):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
