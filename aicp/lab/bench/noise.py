"""How noisy the machine was while a bench ran: the host's steal, and our own process's stalls.

This machine may be a virtual one whose host runs other guests: the ``steal`` column of
``/proc/stat`` counts the time our vCPUs were ready to run but the hypervisor ran something
else. A vCPU descheduled for tens of milliseconds stalls every process on it at once,
which shows up as a latency tail across every hop of a task, and no change in our code
can remove it. Every bench prints what this module measured next to its figures, so a
tail or a slow run can be told apart from a slow code path.

Three measurements, over any window of a run (``mark`` then ``since``):

* **steal share**: steal ticks / all ticks of the ``cpu`` line of ``/proc/stat`` (every
  CPU together; guest time is already inside user time, so it is not added again);
* **stall probe** (optional, ``start_probe``): a thread of the bench process that sleeps
  5 ms in a loop and records each oversleep above 10 ms (count, total, max, and the
  wall-clock time each one ended, so ``python -m aicp.lab.bench.tail`` can line the
  stalls up with the slow tasks). At normal priority it is woken ahead of niced work,
  so a long oversleep means the whole vCPU was away (steal) or every core was busy.
  Cost: about 200 wake-ups a second of one thread. It slept 1 ms at first: 1,000 wake-ups
  a second made it a fifth process competing for the two cores the roles share, so it
  sleeps 5 ms, which still sees every stall over 10 ms.
* **other processes' CPU** (when the caller says how much CPU its own processes used,
  ``since(mark, fleet_cpu_s=...)``): the CPU every process of the machine used (the busy
  ticks of ``/proc/stat``) less the bench's own (this process, its threads and the
  children it reaped in the window, from ``getrusage``) and the fleet's, in cores. Other
  people's jobs take the cores the roles share and so add run-queue waits and a latency
  tail of their own, and ``nice`` does not keep them off: with ``sched_autogroup`` on
  (``/proc/sys/kernel/sched_autogroup_enabled``) each session is scheduled as one group of
  equal weight whatever its processes' nice values (sched(7)), so ``nice -n 19`` jobs in
  other sessions took 0.5-1.1 cores from a bench's roles on this machine (traced with
  ``sched_switch`` on 28 Nov 2026).

Off Linux (no ``/proc/stat``) the steal share is ``None`` and prints as "unknown".
Memory: the probe keeps at most ``MAX_STALLS`` stalls (O(1) per wake-up).
"""

from __future__ import annotations

import bisect
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

#: The columns of a ``/proc/stat`` cpu line, in order (proc(5)); older kernels give fewer.
CPU_FIELDS: Final = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
#: The probe's sleep and the oversleep it counts as a stall.
PROBE_SLEEP_S: Final = 0.005
STALL_S: Final = 0.010
MAX_STALLS: Final = 100_000
PROC_STAT: Final = Path("/proc/stat")
AUTOGROUP: Final = Path("/proc/sys/kernel/sched_autogroup_enabled")
#: Cores of other processes during a trial above which ``autogroup_note`` speaks.
OTHERS_NOTED: Final = 0.2
#: The ``/proc/stat`` columns that are CPU work (guest time is already inside user and nice).
BUSY_FIELDS: Final = ("user", "nice", "system", "irq", "softirq")


def parse_cpu_times(text: str) -> dict[str, int] | None:
    """The aggregate ``cpu`` line of a ``/proc/stat`` text as {column: ticks}; None if it has none."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            return {name: int(v) for name, v in zip(CPU_FIELDS, parts[1:])}
    return None


def read_cpu_times(path: Path = PROC_STAT) -> dict[str, int] | None:
    """``parse_cpu_times`` of ``/proc/stat`` now; None where there is no such file (not Linux)."""
    try:
        return parse_cpu_times(path.read_text())
    except OSError:
        return None


def steal_share(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """Steal ticks over all ticks between two ``read_cpu_times``; None if unknown or no tick passed.

    guest and guest_nice are left out of the total: the kernel already counts them in user and nice.
    """
    if before is None or after is None:
        return None
    counted = [k for k in CPU_FIELDS[:8] if k in before and k in after]
    total = sum(after[k] - before[k] for k in counted)
    if total <= 0 or "steal" not in counted:
        return None
    return (after["steal"] - before["steal"]) / total


def busy_s(before: dict[str, int] | None, after: dict[str, int] | None, ticks_per_s: float | None = None) -> float | None:
    """CPU seconds every process of the machine used between two ``read_cpu_times`` (all CPUs added); None if unknown."""
    if before is None or after is None or any(k not in before or k not in after for k in BUSY_FIELDS):
        return None
    hz = ticks_per_s if ticks_per_s is not None else os.sysconf("SC_CLK_TCK")
    return sum(after[k] - before[k] for k in BUSY_FIELDS) / hz


def own_cpu_s() -> float:
    """CPU seconds of this process (every thread) and of the children it has reaped, so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def others_cores(busy: float | None, ours: float, seconds: float) -> float | None:
    """Cores used on average by processes other than the bench and its fleet (``ours`` s of CPU) while the whole
    machine used ``busy`` s in ``seconds``; never below 0 (both sides are counted in clock ticks)."""
    if busy is None or seconds <= 0:
        return None
    return max(0.0, busy - ours) / seconds


@dataclass
class Mark:
    """The start of a window: wall and monotonic time, the CPU ticks then, the bench's own CPU (``own_cpu_s``) and,
    from ``Fleet.mark_noise``, the fleet's processes' CPU by pid."""

    wall: float
    mono: float
    cpu: dict[str, int] | None
    own: float = 0.0
    fleet_cpu0: dict[int, float] = field(default_factory=dict)


@dataclass
class StallProbe:
    """A thread that sleeps ``sleep_s`` in a loop and keeps each oversleep above ``stall_s``.

    ``ends`` (wall-clock end of each stall, ascending) and ``lengths`` (its oversleep, s) grow
    together; a window's stalls are found by bisection, O(log n).
    """

    sleep_s: float = PROBE_SLEEP_S
    stall_s: float = STALL_S
    ends: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)
    wakeups: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StallProbe:
        self._thread = threading.Thread(target=self._run, name="stall-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        sleep, mono, wall, limit = time.sleep, time.monotonic, time.time, self.sleep_s + self.stall_s
        last = mono()
        while not self._stop.is_set():
            sleep(self.sleep_s)
            now = mono()
            self.wakeups += 1
            if now - last > limit and len(self.ends) < MAX_STALLS:
                self.ends.append(wall())
                self.lengths.append(now - last - self.sleep_s)
            last = now

    def between(self, wall0: float, wall1: float) -> tuple[list[float], list[float]]:
        """The stalls that ended in [wall0, wall1): (end times, lengths in s)."""
        ends = self.ends[:]  # the thread may append meanwhile
        i, j = bisect.bisect_left(ends, wall0), bisect.bisect_left(ends, wall1)
        return ends[i:j], self.lengths[i:j]


class NoiseMeter:
    """Steal share and (if started) stall probe over windows of a run: ``mark()`` then ``since(mark)``."""

    def __init__(self, probe: bool = True) -> None:
        self.probe = StallProbe().start() if probe else None
        self.first = self.mark()

    def mark(self) -> Mark:
        return Mark(time.time(), time.monotonic(), read_cpu_times(), own_cpu_s())

    def since(self, mark: Mark, keep_stalls: int = 200, fleet_cpu_s: float | None = None) -> dict[str, Any]:
        """What the machine did since ``mark``: steal share, the probe's stalls (with up to ``keep_stalls`` of them listed)
        and, given the CPU the fleet's running processes used in the window (``fleet_cpu_s``), the cores other processes took."""
        now = self.mark()
        out: dict[str, Any] = {"seconds": now.mono - mark.mono, "steal_share": steal_share(mark.cpu, now.cpu)}
        if fleet_cpu_s is not None:
            ours = now.own - mark.own + fleet_cpu_s
            out["ours_cores"] = ours / out["seconds"] if out["seconds"] > 0 else None
            out["others_cores"] = others_cores(busy_s(mark.cpu, now.cpu), ours, out["seconds"])
        if self.probe is not None:
            ends, lengths = self.probe.between(mark.wall, now.wall)
            out.update({"stalls": len(lengths), "stall_total_ms": 1e3 * sum(lengths), "stall_max_ms": 1e3 * max(lengths, default=0.0),
                        "stall_threshold_ms": 1e3 * self.probe.stall_s,
                        "stall_list": [[round(e, 4), round(1e3 * n, 2)] for e, n in list(zip(ends, lengths))[:keep_stalls]]})
        return out

    def stop(self) -> dict[str, Any]:
        """The whole run since this meter was made; stops the probe."""
        out = self.since(self.first, keep_stalls=MAX_STALLS)
        if self.probe is not None:
            self.probe.stop()
        return out


def format_noise(n: dict[str, Any] | None) -> str:
    """A short text: ``steal 41%, 3 stalls > 10 ms (total 85 ms, max 40 ms)``; "unknown" parts where not measured."""
    if not n:
        return "machine noise unknown"
    share = n.get("steal_share")
    text = "steal unknown" if share is None else f"steal {100 * share:.0f}%"
    if "stalls" in n:
        text += f", {n['stalls']} stalls > {n['stall_threshold_ms']:g} ms (total {n['stall_total_ms']:.0f} ms, max {n['stall_max_ms']:.0f} ms)"
    else:
        text += ", stalls unknown"
    if n.get("others_cores") is not None:
        text += f", other processes {n['others_cores']:.2f} cores"
    return text


def autogroup_note(others: float | None, path: Path = AUTOGROUP) -> str | None:
    """A line for a run whose trials shared the CPUs with ``others`` cores of other processes, when the kernel groups
    sessions (``sched_autogroup``): their ``nice`` then does not keep them off the bench's cores. None otherwise."""
    if others is None or others < OTHERS_NOTED:
        return None
    try:
        grouped = path.read_text().strip() == "1"
    except OSError:
        grouped = False
    text = f"other processes took up to {others:.2f} cores during a trial: its latency and CPU figures include their contention"
    if grouped:
        text += ("; sched_autogroup is on, so a job's nice value does not yield to another session (sched(7)): run such jobs in a "
                 "session of low weight (echo 19 > /proc/self/autogroup in their shell), or run the bench when they are done")
    return text


def merge_noise(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several windows' noise as one: steal share weighted by each window's seconds, stalls added up."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    seconds = sum(p["seconds"] for p in parts)
    shares = [(p["steal_share"], p["seconds"]) for p in parts if p.get("steal_share") is not None]
    weight = sum(s for _, s in shares)
    out: dict[str, Any] = {"seconds": seconds, "steal_share": sum(v * s for v, s in shares) / weight if shares and weight > 0 else None}
    others = [(p["others_cores"], p["seconds"]) for p in parts if p.get("others_cores") is not None]
    if others and (others_s := sum(s for _, s in others)) > 0:
        out["others_cores"] = sum(v * s for v, s in others) / others_s
    if all("stalls" in p for p in parts):
        out.update({"stalls": sum(p["stalls"] for p in parts), "stall_total_ms": sum(p["stall_total_ms"] for p in parts),
                    "stall_max_ms": max(p["stall_max_ms"] for p in parts), "stall_threshold_ms": parts[0]["stall_threshold_ms"],
                    "stall_list": sorted(s for p in parts for s in p.get("stall_list", []))})
    return out


def runq_wait_s(pid: int) -> float | None:
    """Seconds the threads of ``pid`` have spent ready to run but waiting for a CPU (the second field of
    ``/proc/PID/task/*/schedstat``), so far; None where the kernel does not say (not Linux, process gone).

    Contention among our own processes (and other work) shows here; the host's steal does not (it shows in ``steal_share``).
    """
    try:
        return schedstat_s(pid, 1)
    except (OSError, ValueError, IndexError):
        return None


def schedstat_s(pid: int, column: int) -> float:
    """One column of ``/proc/PID/task/*/schedstat`` summed over the threads of ``pid``, in seconds: 0 the CPU time
    they used, 1 the time they waited for a CPU (ns in the file). Raises ``OSError`` where there is no such file."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
            total += int(f.read().split()[column])
    return total / 1e9
