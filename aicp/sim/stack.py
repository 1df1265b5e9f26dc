"""The live stack's own costs, measured by ``aicp calibrate``, as the simulator charges them.

Without a calibration the simulator models an ideal stack: a task reaches its agent
after one network hop, the agent's slot is held for the drawn service time plus a
modeled signing cost, and the latency is taken at the router. The live system adds
costs of its own, and at 50-85% utilisation a small addition to what holds an
agent's slot raises queueing a lot. A calibration file (JSON, written by
``aicp calibrate``, named by a scenario's ``[calibration] file = ...``) holds what was
measured on one machine, per task, from a recorded live run with idle agents:

* ``timer_ms``: the agent's timer granularity. The synthetic handler sleeps with
  ``asyncio.sleep``; uvloop rounds a delay to whole milliseconds, so the agent is
  busy for ``round(d)``, not ``d``.
* ``wake_ms``: how much longer than its rounded request a sleep lasts (the event
  loop's wake-up, process scheduling on a shared machine). ``service_ms`` signed by
  the agent minus the constant service of the probe.
* ``slot_ms``: what holds a busy agent's slot beyond its handler: signing and sending
  the result, and handing the slot to the next task on the event loop. The mean, over
  back-to-back tasks of one busy agent, of the time between their results minus the
  second's ``service_ms``.
* ``agent_overhead_ms``: at the router, from dispatch to result, minus the agent's
  signed ``service_ms``: the frame hops both ways, the agent's verify and decode,
  its result signing, the router's verify. Charged half on the way out, half back
  (less the part inside the slot), so the router's in-flight count, which
  ``least_loaded`` reads, includes the hops as it does live.
* ``client_ms``: at the load generator, latency from the intended send time minus the
  router's own arrival-to-end time: sending late on a millisecond timer, signing,
  the hops between load generator and router, verifying the outcome. Outside the
  router's queues, so it is added to each task's latency.

The stack's costs grow with the task rate through it (its processes share the
machine's cores), so the probe measures them at a few rates (``levels``) and a
scenario draws from the two levels around its own mean arrival rate, mixed in
proportion (clamped to the lowest and highest level measured; a trace workload counts
as the lowest). Every quantity is kept as samples (empirical distributions), drawn
independently per task with the simulator's own random streams. The model is used only when a
scenario names a calibration, so an uncalibrated scenario runs as before.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from aicp.sim.distributions import Blocks
from aicp.sim.scenario import Scenario

CALIBRATION_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file is missing, malformed, or of an unknown version."""


class Level(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The per-task samples measured at one task rate through the stack (ms)."""

    rate_per_s: Annotated[float, Meta(gt=0.0)]
    wake_ms: list[float]
    agent_overhead_ms: list[float]
    client_ms: list[float]


class Calibration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What ``aicp calibrate`` measured: samples per task at a few task rates (ms), ascending rates."""

    v: int
    timer_ms: Annotated[float, Meta(ge=0.0)] = 1.0  # 0: the agent's sleep is not rounded
    slot_ms: Annotated[float, Meta(ge=0.0)] = 0.0
    levels: list[Level]
    measured: dict[str, object] = {}  # provenance: when, where, probe settings, summaries


def load(path: str | Path) -> Calibration:
    p = Path(path)
    try:
        cal = msgspec.json.decode(p.read_bytes(), type=Calibration)
    except FileNotFoundError:
        raise CalibrationError(f"{p}: no such calibration file") from None
    except msgspec.DecodeError as exc:
        raise CalibrationError(f"{p}: not a calibration file: {exc}") from None
    if cal.v != CALIBRATION_VERSION:
        raise CalibrationError(f"{p}: calibration version {cal.v}; this reader knows {CALIBRATION_VERSION}")
    if not cal.levels:
        raise CalibrationError(f"{p}: no levels")
    for level in cal.levels:
        for name in ("wake_ms", "agent_overhead_ms", "client_ms"):
            if not getattr(level, name):
                raise CalibrationError(f"{p}: {name} at {level.rate_per_s:g}/s holds no samples")
    cal.levels.sort(key=lambda lv: lv.rate_per_s)
    return cal


def bracket(levels: list[Level], rate: float) -> tuple[Level, Level, float]:
    """The two measured levels around ``rate`` and the weight of the upper one (clamped at the ends)."""
    if rate <= levels[0].rate_per_s or len(levels) == 1:
        return levels[0], levels[0], 0.0
    for low, high in itertools.pairwise(levels):
        if rate <= high.rate_per_s:
            return low, high, (rate - low.rate_per_s) / (high.rate_per_s - low.rate_per_s)
    return levels[-1], levels[-1], 0.0


def _sampler(
    low: list[float],
    high: list[float],
    w: float,
    rng: np.random.Generator,
    scale: float = 1.0,
    minus: float = 0.0,
    clip: bool = True,
) -> Callable[[], float]:
    """Draws (in seconds) from the mixture ``(1 - w) low + w high`` of samples (ms), less ``minus``, clipped at zero if ``clip``."""
    floor = 0.0 if clip else None
    lo = np.clip(np.asarray(low, dtype=np.float64) - minus, floor, None) * (scale / 1000.0)
    hi = np.clip(np.asarray(high, dtype=np.float64) - minus, floor, None) * (scale / 1000.0)
    if w <= 0.0:
        return Blocks(lambda n: rng.choice(lo, n))
    return Blocks(lambda n: np.where(rng.random(n) < w, rng.choice(hi, n), rng.choice(lo, n)))


class StackModel:
    """Samplers for the calibrated costs; one per replication (its own random stream).

    O(1) per draw: each is one pop from a block of numpy draws.
    """

    def __init__(self, cal: Calibration, rng: np.random.Generator, rate_per_s: float) -> None:
        self.calibration = cal
        self.timer_s = cal.timer_ms / 1000.0
        self.slot_s = cal.slot_ms / 1000.0
        low, high, w = bracket(cal.levels, rate_per_s)
        # a wake-up may be negative: a timer counts from the loop's cached millisecond, so it can end early
        self._wake = _sampler(low.wake_ms, high.wake_ms, w, rng, clip=False)
        # the slot part (result signing) is charged inside the slot, the rest half each way
        self._half_hop = _sampler(low.agent_overhead_ms, high.agent_overhead_ms, w, rng, 0.5, cal.slot_ms)
        # negative too: the load generator may send up to a timer tick before the intended time
        self._client = _sampler(low.client_ms, high.client_ms, w, rng, clip=False)

    def service(self, draw: Callable[[], float]) -> Callable[[], float]:
        """An agent's busy time per task: the drawn service rounded to the timer, plus the wake-up."""
        timer, wake = self.timer_s, self._wake
        if timer <= 0.0:
            return lambda: max(0.0, draw() + wake())

        def busy() -> float:
            return max(0.0, round(draw() / timer) * timer + wake())

        return busy

    def hop(self, latency: Callable[[], float]) -> Callable[[], float]:
        """One router-agent hop: the scenario's network latency plus half the stack's round trip."""
        half = self._half_hop
        return lambda: latency() + half()

    def client(self) -> float:
        """Seconds outside the router added to one task's latency."""
        return self._client()


def summary(level: Level) -> dict[str, float]:
    """Means and medians of a level's sample sets, for tables and reports."""
    out: dict[str, float] = {"rate_per_s": level.rate_per_s}
    for name in ("wake_ms", "agent_overhead_ms", "client_ms"):
        arr = np.asarray(getattr(level, name), dtype=np.float64)
        out[name.replace("_ms", "_mean_ms")] = float(arr.mean())
        out[name.replace("_ms", "_p50_ms")] = float(np.median(arr))
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def model(scenario: Scenario, rng: np.random.Generator) -> StackModel:
    """The stack model of a scenario that names a calibration file."""
    from aicp.sim.workload import expected_count

    assert scenario.calibration is not None
    rate = sum(expected_count(w.arrival, scenario.duration_s) for w in scenario.workload) / scenario.duration_s
    return StackModel(load(scenario.resolve(scenario.calibration.file)), rng, rate)
