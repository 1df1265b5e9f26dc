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
* ``slot_ms``: CPU inside the agent's slot after its handler: encoding and signing
  the result (a microbenchmark of one Ed25519 signature).
* ``agent_overhead_ms``: at the router, from dispatch to result, minus the agent's
  signed ``service_ms``: the frame hops both ways, the agent's verify and decode,
  its result signing, the router's verify. Charged half on the way out, half back
  (less the part inside the slot), so the router's in-flight count, which
  ``least_loaded`` reads, includes the hops as it does live.
* ``client_ms``: at the load generator, latency from the intended send time minus the
  router's own arrival-to-end time: sending late on a millisecond timer, signing,
  the hops between load generator and router, verifying the outcome. Outside the
  router's queues, so it is added to each task's latency.

Every quantity is kept as samples (empirical distributions), drawn independently per
task with the simulator's own random streams. The model is used only when a
scenario names a calibration, so an uncalibrated scenario runs as before.
"""

from __future__ import annotations

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


class Calibration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What ``aicp calibrate`` measured (all times in milliseconds, samples per task)."""

    v: int
    timer_ms: Annotated[float, Meta(ge=0.0)] = 1.0  # 0: the agent's sleep is not rounded
    wake_ms: list[float]
    slot_ms: Annotated[float, Meta(ge=0.0)] = 0.0
    agent_overhead_ms: list[float]
    client_ms: list[float]
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
    for name in ("wake_ms", "agent_overhead_ms", "client_ms"):
        if not getattr(cal, name):
            raise CalibrationError(f"{p}: {name} holds no samples")
    return cal


def _sampler(samples_ms: list[float], rng: np.random.Generator, scale: float = 1.0) -> Callable[[], float]:
    """Draws (in seconds) from the samples, negative ones clipped to zero."""
    arr = np.clip(np.asarray(samples_ms, dtype=np.float64), 0.0, None) * (scale / 1000.0)
    return Blocks(lambda n: rng.choice(arr, n))


class StackModel:
    """Samplers for the calibrated costs; one per replication (its own random stream).

    O(1) per draw: each is one pop from a block of numpy draws.
    """

    def __init__(self, cal: Calibration, rng: np.random.Generator) -> None:
        self.calibration = cal
        self.timer_s = cal.timer_ms / 1000.0
        self.slot_s = cal.slot_ms / 1000.0
        self._wake = _sampler(cal.wake_ms, rng)
        # the slot part (result signing) is charged inside the slot, the rest half each way
        self._half_hop = _sampler([max(0.0, x - cal.slot_ms) for x in cal.agent_overhead_ms], rng, 0.5)
        self._client = _sampler(cal.client_ms, rng)

    def service(self, draw: Callable[[], float]) -> Callable[[], float]:
        """An agent's busy time per task: the drawn service rounded to the timer, plus the wake-up."""
        timer, wake = self.timer_s, self._wake
        if timer <= 0.0:
            return lambda: draw() + wake()

        def busy() -> float:
            return round(draw() / timer) * timer + wake()

        return busy

    def hop(self, latency: Callable[[], float]) -> Callable[[], float]:
        """One router-agent hop: the scenario's network latency plus half the stack's round trip."""
        half = self._half_hop
        return lambda: latency() + half()

    def client(self) -> float:
        """Seconds outside the router added to one task's latency."""
        return self._client()


def summary(cal: Calibration) -> dict[str, float]:
    """Means and medians of each sample set, for tables and reports."""
    out: dict[str, float] = {"timer_ms": cal.timer_ms, "slot_ms": cal.slot_ms}
    for name in ("wake_ms", "agent_overhead_ms", "client_ms"):
        arr = np.asarray(getattr(cal, name), dtype=np.float64)
        out[name.replace("_ms", "_mean_ms")] = float(arr.mean())
        out[name.replace("_ms", "_p50_ms")] = float(np.median(arr))
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}


def model(scenario: Scenario, rng: np.random.Generator) -> StackModel:
    """The stack model of a scenario that names a calibration file."""
    assert scenario.calibration is not None
    return StackModel(load(scenario.resolve(scenario.calibration.file)), rng)
