"""Arrival processes as iterators of absolute arrival times (seconds).

Synthetic processes yield floats; a trace yields ``(t, method, service_s)`` rows.
Non-homogeneous processes (bursty, ramp) use thinning: Poisson at the peak rate,
each arrival kept with probability rate(t) / peak.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from aicp.sim.distributions import BLOCK
from aicp.sim.scenario import (
    Arrival,
    BurstyArrival,
    ConstantArrival,
    PoissonArrival,
    RampArrival,
    ScenarioError,
    TraceArrival,
)

TraceRow = tuple[float, str | None, float | None]


def arrival_times(spec: Arrival, rng: np.random.Generator, end_s: float) -> Iterator[float]:
    """Arrival times in [0, end_s) of a synthetic process."""
    if isinstance(spec, PoissonArrival):
        return _poisson(spec.rate_per_s, rng, end_s)
    if isinstance(spec, ConstantArrival):
        return _constant(spec.rate_per_s, end_s)
    if isinstance(spec, BurstyArrival):
        on, off, hi, lo = spec.on_s, spec.off_s, spec.rate_per_s, spec.off_rate_per_s
        period = on + off

        def bursty(t: float) -> float:
            return hi if math.fmod(t, period) < on else lo

        return _thinned(max(hi, lo), bursty, rng, end_s)
    if isinstance(spec, RampArrival):
        r0, r1 = spec.rate_per_s, spec.to_rate_per_s
        span = spec.ramp_s if spec.ramp_s is not None else end_s

        def ramp(t: float) -> float:
            return r1 if t >= span else r0 + (r1 - r0) * t / span

        return _thinned(max(r0, r1), ramp, rng, end_s)
    raise TypeError(f"{type(spec).__name__} is not a synthetic arrival process")


def expected_count(spec: Arrival, end_s: float) -> float:
    """Roughly how many arrivals to expect (sizes the record arrays)."""
    if isinstance(spec, PoissonArrival | ConstantArrival):
        return spec.rate_per_s * end_s
    if isinstance(spec, BurstyArrival):
        frac = spec.on_s / (spec.on_s + spec.off_s)
        return end_s * (spec.rate_per_s * frac + spec.off_rate_per_s * (1 - frac))
    if isinstance(spec, RampArrival):
        return end_s * max(spec.rate_per_s, spec.to_rate_per_s)
    return 1024.0


def _poisson(rate: float, rng: np.random.Generator, end_s: float) -> Iterator[float]:
    t = 0.0
    scale = 1.0 / rate
    while True:
        for gap in rng.exponential(scale, BLOCK).tolist():
            t += gap
            if t >= end_s:
                return
            yield t


def _constant(rate: float, end_s: float) -> Iterator[float]:
    k = 0
    while True:
        t = k / rate
        if t >= end_s:
            return
        yield t
        k += 1


def _thinned(peak: float, rate: Callable[[float], float], rng: np.random.Generator, end_s: float) -> Iterator[float]:
    if peak <= 0.0:
        return
    t = 0.0
    scale = 1.0 / peak
    while True:
        gaps = rng.exponential(scale, BLOCK).tolist()
        keep = rng.random(BLOCK).tolist()
        for gap, u in zip(gaps, keep):
            t += gap
            if t >= end_s:
                return
            if u * peak < rate(t):
                yield t


def read_trace(spec: TraceArrival, path: Path, end_s: float) -> list[TraceRow]:
    """Rows ``(t_s, method or None, service_s or None)`` sorted by time, keeping t < end_s."""
    rows: list[TraceRow] = []
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
                if line.strip():
                    obj = json.loads(line)
                    rows.append(_row(obj, spec.time_scale, f"{path}:{n}"))
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                for n, rec in enumerate(csv.DictReader(fh), 2):
                    rows.append(_row(rec, spec.time_scale, f"{path}:{n}"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: cannot read trace: {exc}") from None
    rows.sort(key=lambda r: r[0])
    return [r for r in rows if r[0] < end_s]


def _row(rec: dict[str, object], scale: float, where: str) -> TraceRow:
    unknown = set(rec) - {"t_s", "method", "service_ms"}
    if unknown:
        raise ValueError(f"{where}: unknown column(s) {sorted(unknown)}; expected t_s, method, service_ms")
    if rec.get("t_s") in (None, ""):
        raise ValueError(f"{where}: t_s is missing")
    t = float(str(rec["t_s"])) * scale
    method = rec.get("method")
    service = rec.get("service_ms")
    return (
        t,
        str(method) if method not in (None, "") else None,
        float(str(service)) / 1000.0 if service not in (None, "") else None,
    )
