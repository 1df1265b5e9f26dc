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

import statistics
import time
import timeit
from typing import Any, Final

from aicp.messages import PROTOCOL_VERSION, Task, encode, payload
from aicp.signing import Identity, verify

#: Signature operations per completed task, by the router's verification policy:
#: (signs, verifies). Signs: controller (task), agent (result). Verifies: agent (task),
#: controller (result), and with ``every-hop`` the router both (task and result).
OPS_PER_TASK: Final = {"every-hop": (2, 4), "edge": (2, 2)}

#: The roles whose CPU ``aicp bench`` counts, in print order.
ROLES: Final = ("router", "relay", "agents", "loadgen")


def _cpu_per_op(fn: Any, repeat: int, number: int) -> float:
    """Median CPU-seconds per call (``process_time``) over ``repeat`` rounds of ``number`` calls."""
    timer = timeit.Timer(fn, timer=time.process_time)
    return statistics.median(t / number for t in timer.repeat(repeat=repeat, number=number))


def signature_costs(repeat: int = 7, number: int = 2000) -> dict[str, float]:
    """CPU µs of one ``sign`` and one ``verify`` of a bench-sized task body (median of ``repeat`` rounds)."""
    ident = Identity(bytes(range(32)))
    body = encode(Task(v=PROTOCOL_VERSION, id="task-000001", sender="ctl-1", ts=1.7e9, method="bench.synthetic",
                       payload=payload({"text": "x" * 64})))
    sig = ident.sign(body)
    pk = ident.public_key
    return {"sign_us": 1e6 * _cpu_per_op(lambda: ident.sign(body), repeat, number),
            "verify_us": 1e6 * _cpu_per_op(lambda: verify(pk, body, sig), repeat, number)}


def signature_floor(policy: str, costs: dict[str, float]) -> dict[str, float]:
    """The signature CPU of one task under ``policy``: signs × sign + verifies × verify."""
    signs, verifies = OPS_PER_TASK[policy]
    return {**costs, "signs": signs, "verifies": verifies, "floor_us": signs * costs["sign_us"] + verifies * costs["verify_us"]}


def merge_costs(*measured: dict[str, float]) -> dict[str, float]:
    """The lower of several measurements of the same costs (each a median): the least disturbed by other load."""
    return {key: min(m[key] for m in measured) for key in measured[0]}


def cpu_per_task(cpu: dict[str, dict[str, float]], completed: int, floor_us: float | None = None) -> dict[str, Any]:
    """µs of CPU per completed task for each role and in total; with ``floor_us``, the total's ratio to it."""
    if completed <= 0:
        return {"completed": completed}
    per_role = {role: 1e6 * row["cpu_s"] / completed for role, row in cpu.items()}
    total = sum(per_role.values())
    out: dict[str, Any] = {"completed": completed, "by_role_us": per_role, "total_us": total}
    if floor_us:
        out["floor_us"] = floor_us
        out["ratio_to_floor"] = total / floor_us
    return out


def format_cpu(name: str, per_task: dict[str, Any]) -> str:
    """One line: CPU per task by role, total, and the ratio to the floor."""
    if "total_us" not in per_task:
        return f"{name:8} cpu per task: no task completed"
    roles = "  ".join(f"{role} {us:6.0f}" for role, us in sorted(per_task["by_role_us"].items(), key=lambda kv: _order(kv[0])))
    line = f"{name:8} cpu per task (µs): {roles}  total {per_task['total_us']:6.0f}"
    if "ratio_to_floor" in per_task:
        line += f"  = {per_task['ratio_to_floor']:.2f}x the signature floor"
    return line


def format_floor(floor: dict[str, float]) -> str:
    return (f"signature floor: {floor['signs']:.0f} signs x {floor['sign_us']:.1f} µs + {floor['verifies']:.0f} verifies x "
            f"{floor['verify_us']:.1f} µs = {floor['floor_us']:.0f} µs of CPU per task")


def _order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)


def annotate_summary(summary: dict[str, Any], costs: dict[str, float], policy: str) -> list[str]:
    """Add the floor and each trial's ``cpu_per_task`` to a bench summary; return the lines to print.

    The relay verifies every hop like the router's default, so it is held to the ``every-hop`` floor.
    """
    floors = {"router": signature_floor(policy, costs), "relay": signature_floor("every-hop", costs)}
    summary["signature_floor"] = floors["router"]
    lines = [format_floor(floors["router"])]
    for key in ("router", "relay", "router_at_1000"):
        trial = summary.get(key)
        if isinstance(trial, dict) and "cpu" in trial:
            target = "relay" if key == "relay" else "router"
            trial["cpu_per_task"] = cpu_per_task(trial["cpu"], trial["completed"], floors[target]["floor_us"])
            lines.append(format_cpu(key if key != "router_at_1000" else "at 1000", trial["cpu_per_task"]))
    for key in ("router_sweep", "relay_sweep"):
        for trial in summary.get(key, []):
            target = "relay" if key == "relay_sweep" else "router"
            trial["cpu_per_task"] = cpu_per_task(trial["cpu"], trial["completed"], floors[target]["floor_us"])
    return lines
