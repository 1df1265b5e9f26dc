"""CPU per task by role, next to the signature floor measured in the same run.

Signatures are the irreducible cost of a task: the controller signs the task, the
router verifies it, the agent verifies it, signs its result, the router verifies
the result and the controller verifies it. Everything else a process spends on a
task (framing, JSON, the event loop, bookkeeping) is overhead.

``cpu_per_task`` divides each role's CPU-seconds (user + system, from psutil or
``process_time``) by the tasks completed in the same window. CPU per task is far
less sensitive to other load on the machine than throughput, since a process that
is kept off the CPU is not charged for it.

``signature_floor`` times AICP's own ``Identity.sign`` and ``signing.verify``
(bench-core's ``sign`` and ``verify`` rows) in CPU time, in the benchmark's own
process, and multiplies them by the operations one task needs.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
import timeit
from collections.abc import Iterator
from typing import Any, Final

from aicp.messages import PROTOCOL_VERSION, Task, encode, payload
from aicp.signing import Identity, verify

#: Signature operations per completed task, by the router's verification policy:
#: (signs, verifies). Signs: controller (task), agent (result). Verifies: agent (task),
#: controller (result), and with ``every-hop`` the router both (task and result).
OPS_PER_TASK: Final = {"every-hop": (2, 4), "edge": (2, 2)}

#: The roles whose CPU ``aicp bench`` counts, in print order.
ROLES: Final = ("router", "relay", "agents", "loadgen")


def _cpu_per_op(fn: Any, repeat: int, number: int, clock: Any = time.process_time) -> float:
    """Median CPU-seconds per call (``process_time``) over ``repeat`` rounds of ``number`` calls."""
    timer = timeit.Timer(fn, timer=clock)
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def signature_costs(repeat: int = 7, number: int = 2000, clock: Any = time.process_time) -> dict[str, float]:
    """CPU µs of one ``sign`` and one ``verify`` of a bench-sized task body (median of ``repeat`` rounds)."""
    ident = Identity(bytes(range(32)))
    body = encode(Task(v=PROTOCOL_VERSION, id="task-000001", sender="ctl-1", ts=1.7e9, method="bench.synthetic",
                       payload=payload({"text": "x" * 64})))
    sig = ident.sign(body)
    pk = ident.public_key
    return {"sign_us": 1e6 * _cpu_per_op(lambda: ident.sign(body), repeat, number, clock),
            "verify_us": 1e6 * _cpu_per_op(lambda: verify(pk, body, sig), repeat, number, clock)}


class FloorSampler:
    """Times sign and verify now and then *while* the trials run, on a thread of the bench process.

    On a machine shared with other work, every process's CPU per operation grows with the
    contention (caches, sibling hyperthreads). The floor timed under the same conditions
    keeps the ratio comparable between runs; the quiet floor (before and after) is kept too.
    Duty cycle about 2% of one core, in bursts of about 2 ms (20 signs and 20 verifies every
    0.1 s): a burst takes a core from the processes under test, and the 12 ms bursts this
    sampler used to run (100 of each every 0.5 s) pushed the tasks they overlapped into the
    latency tail. ``quiet()`` stops it for a latency trial (the half-capacity and 1000/s runs).
    """

    def __init__(self, every_s: float = 0.1, number: int = 20) -> None:
        self.every_s = every_s
        self.number = number
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="floor-sampler", daemon=True)

    def start(self) -> FloorSampler:
        self._thread.start()
        return self

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No sample starts inside this block (one already begun ends within a few ms)."""
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def stop(self) -> dict[str, float] | None:
        """Median of the samples, or None if there were none."""
        self._stop.set()
        self._running.set()
        self._thread.join(timeout=5)
        if not self.samples:
            return None
        return {key: statistics.median(s[key] for s in self.samples) for key in self.samples[0]}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._running.wait()
            if not self._stop.is_set():
                self.samples.append(signature_costs(repeat=1, number=self.number, clock=time.thread_time))


def signature_floor(policy: str, costs: dict[str, float]) -> dict[str, float]:
    """The signature CPU of one task under ``policy``: signs × sign + verifies × verify."""
    signs, verifies = OPS_PER_TASK[policy]
    return {**costs, "signs": signs, "verifies": verifies, "floor_us": signs * costs["sign_us"] + verifies * costs["verify_us"]}


def merge_costs(*measured: dict[str, float]) -> dict[str, float]:
    """The lower of several measurements of the same costs (each a median): the least disturbed by other load."""
    return {key: min(m[key] for m in measured) for key in measured[0]}


def cpu_per_task(cpu: dict[str, dict[str, float]], completed: int, floor_us: float | None = None, floor_during_us: float | None = None) -> dict[str, Any]:
    """µs of CPU per completed task for each role and in total; with ``floor_us``, the total's ratio to it."""
    if completed <= 0:
        return {"completed": completed}
    per_role = {role: 1e6 * row["cpu_s"] / completed for role, row in cpu.items()}
    total = sum(per_role.values())
    out: dict[str, Any] = {"completed": completed, "by_role_us": per_role, "total_us": total}
    if all("write_calls" in row for row in cpu.values()):
        # Reads and writes (system calls) per task: what batching changes, whatever the load on the machine.
        out["syscalls_by_role"] = {role: {"reads": row["read_calls"] / completed, "writes": row["write_calls"] / completed} for role, row in cpu.items()}
    if floor_us:
        out["floor_us"] = floor_us
        out["ratio_to_floor"] = total / floor_us
    if floor_during_us:
        out["floor_during_us"] = floor_during_us
        out["ratio_to_floor_during"] = total / floor_during_us
    return out


def format_cpu(name: str, per_task: dict[str, Any]) -> str:
    """One line: CPU per task by role, total, and the ratio to the floor."""
    if "total_us" not in per_task:
        return f"{name:8} cpu per task: no task completed"
    roles = "  ".join(f"{role} {us:6.0f}" for role, us in sorted(per_task["by_role_us"].items(), key=lambda kv: _order(kv[0])))
    line = f"{name:8} cpu per task (µs): {roles}  total {per_task['total_us']:6.0f}"
    if "ratio_to_floor" in per_task:
        line += f"  = {per_task['ratio_to_floor']:.2f}x the signature floor"
    if "ratio_to_floor_during" in per_task:
        line += f" ({per_task['ratio_to_floor_during']:.2f}x the floor timed during the run)"
    calls = per_task.get("syscalls_by_role")
    if calls:
        line += "\n" + " " * 9 + "reads/writes per task: " + "  ".join(
            f"{role} {c['reads']:.2f}/{c['writes']:.2f}" for role, c in sorted(calls.items(), key=lambda kv: _order(kv[0])))
    return line


def format_floor(floor: dict[str, float]) -> str:
    return (f"signature floor: {floor['signs']:.0f} signs x {floor['sign_us']:.1f} µs + {floor['verifies']:.0f} verifies x "
            f"{floor['verify_us']:.1f} µs = {floor['floor_us']:.0f} µs of CPU per task")


def io_calls(process: Any) -> tuple[int, int]:
    """(read, write) system calls of a psutil process so far; (0, 0) where the OS does not count them.

    Linux counts the read()/write() family (uvloop's socket I/O), not recv()/send(): a transport
    that calls those (picows does) shows no calls here.
    """
    try:
        io = process.io_counters()
        return int(io.read_count), int(io.write_count)
    except Exception:  # psutil.Error, or no io_counters on this platform
        return 0, 0


def _order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)


def annotate_summary(summary: dict[str, Any], costs: dict[str, float], policy: str, during: dict[str, float] | None = None) -> list[str]:
    """Add the floor and each trial's ``cpu_per_task`` to a bench summary; return the lines to print.

    ``costs``: sign and verify timed before and after the trials; ``during``: timed while they ran.
    The relay verifies every hop like the router's default, so it is held to the ``every-hop`` floor.
    """
    floors = {"router": signature_floor(policy, costs), "relay": signature_floor("every-hop", costs)}
    floors_during = {"router": signature_floor(policy, during), "relay": signature_floor("every-hop", during)} if during else {}
    summary["signature_floor"] = floors["router"]
    lines = [format_floor(floors["router"])]
    if floors_during:
        summary["signature_floor_during"] = floors_during["router"]
        lines.append("during the run: " + format_floor(floors_during["router"]))

    def per_task(trial: dict[str, Any], target: str) -> dict[str, Any]:
        return cpu_per_task(trial["cpu"], trial["completed"], floors[target]["floor_us"],
                            floors_during[target]["floor_us"] if floors_during else None)

    for key in ("router", "relay", "relay_picows", "router_at_1000"):
        trial = summary.get(key)
        if isinstance(trial, dict) and "cpu" in trial:
            target = "relay" if key.startswith("relay") else "router"
            trial["cpu_per_task"] = per_task(trial, target)
            lines.append(format_cpu({"router_at_1000": "at 1000", "relay_picows": "picows"}.get(key, key), trial["cpu_per_task"]))
    for key in ("router_sweep", "relay_sweep"):
        for trial in summary.get(key, []):
            trial["cpu_per_task"] = per_task(trial, "relay" if key == "relay_sweep" else "router")
    return lines


def compare_relays(summary: dict[str, Any]) -> list[str]:
    """With both relays in the run: picows against websockets, in throughput and in the relay's own CPU per task."""
    ws, pw = summary.get("relay"), summary.get("relay_picows")
    if not (isinstance(ws, dict) and isinstance(pw, dict) and ws.get("throughput_per_s") and "cpu_per_task" in ws and "cpu_per_task" in pw):
        return []
    ws_cpu = ws["cpu_per_task"].get("by_role_us", {}).get("relay")
    pw_cpu = pw["cpu_per_task"].get("by_role_us", {}).get("relay")
    out = {"throughput_ratio": pw["throughput_per_s"] / ws["throughput_per_s"], "relay_cpu_us_websockets": ws_cpu, "relay_cpu_us_picows": pw_cpu}
    summary["relay_picows_vs_websockets"] = out
    line = f"relay on picows / on websockets: throughput {out['throughput_ratio']:.2f}"
    if ws_cpu and pw_cpu:
        line += f", relay CPU per task {pw_cpu:.0f} / {ws_cpu:.0f} µs = {pw_cpu / ws_cpu:.2f}"
    return [line]


#: Issue 15's goals, each judged in one run.
GOAL_RATIO_TO_FLOOR: Final = 1.5
GOAL_ROUTER_OVER_RELAY: Final = 1.0
GOAL_P99_MS_AT_HALF: Final = 10.0


def goals(summary: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """PASS/FAIL rows for the CPU, relay and half-capacity latency goals; n/a when the run lacks the trial."""
    rows: list[tuple[str, bool | None, str]] = []
    per_task = summary.get("router", {}).get("cpu_per_task", {})
    if "ratio_to_floor" in per_task:
        during = per_task.get("ratio_to_floor_during")
        measured = f"{per_task['ratio_to_floor']:.2f}x" + (f" ({during:.2f}x during)" if during else "")
        rows.append((f"goal: CPU per task <= {GOAL_RATIO_TO_FLOOR}x the signature floor", per_task["ratio_to_floor"] <= GOAL_RATIO_TO_FLOOR, measured))
    ratio = summary.get("relay_ratio")
    rows.append((f"goal: router >= {GOAL_ROUTER_OVER_RELAY:.1f}x the minimal relay", None if ratio is None else ratio >= GOAL_ROUTER_OVER_RELAY,
                 "run with --baseline" if ratio is None else f"{ratio:.2f}x"))
    half = summary.get("router_at_half")
    if half is None:
        rows.append((f"goal: p99 < {GOAL_P99_MS_AT_HALF:g} ms at half capacity", None, "run closed loop with --half-capacity"))
    else:
        p99 = half["latency_ms"]["p99"]
        rows.append((f"goal: p99 < {GOAL_P99_MS_AT_HALF:g} ms at half capacity", p99 < GOAL_P99_MS_AT_HALF,
                     f"p99 {p99:.2f} ms at {half['offered_rate_per_s']:.0f}/s"))
    return rows
