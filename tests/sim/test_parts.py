"""Small pieces: Student t, arrival processes, samplers, records."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from aicp.sim.distributions import seconds
from aicp.sim.metrics import Records
from aicp.sim.scenario import BurstyArrival, ConstantArrival, EmpiricalDist, LognormalDist, PoissonArrival, RampArrival
from aicp.sim.stats import mean_ci, t975
from aicp.sim.workload import arrival_times


def test_student_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(30) == 2.042
    assert t975(60) == pytest.approx(2.000, abs=1e-3)
    assert t975(120) == pytest.approx(1.980, abs=1e-3)
    assert t975(10**6) == pytest.approx(1.95997, abs=1e-4)


def test_mean_ci() -> None:
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert mean_ci([5.0]) == (5.0, None)
    assert mean_ci([None, float("nan")]) == (None, None)


def rng() -> np.random.Generator:
    return np.random.default_rng(5)


def test_poisson_and_constant_rates() -> None:
    ts = np.fromiter(arrival_times(PoissonArrival(rate_per_s=1000.0), rng(), 100.0), float)
    assert ts.size == pytest.approx(100_000, rel=0.02)
    assert (np.diff(ts) >= 0).all() and ts[-1] < 100.0
    gaps = np.diff(ts)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential
    cs = list(arrival_times(ConstantArrival(rate_per_s=4.0), rng(), 2.0))
    assert cs == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_bursty_is_silent_when_off() -> None:
    ts = np.fromiter(arrival_times(BurstyArrival(rate_per_s=500.0, on_s=1.0, off_s=2.0), rng(), 30.0), float)
    phase = np.fmod(ts, 3.0)
    assert (phase < 1.0).all()
    assert ts.size == pytest.approx(500 * 10, rel=0.05)


def test_ramp_rises() -> None:
    ts = np.fromiter(arrival_times(RampArrival(rate_per_s=0.0, to_rate_per_s=1000.0), rng(), 20.0), float)
    first, second = (ts < 10).sum(), (ts >= 10).sum()
    assert first == pytest.approx(0.25 * 10_000, rel=0.06) and second == pytest.approx(0.75 * 10_000, rel=0.04)


def test_samplers(tmp_path: Path) -> None:
    draw = seconds(LognormalDist(mean_ms=40.0, sigma=0.5), rng())
    xs = np.array([draw() for _ in range(50_000)])
    assert xs.mean() == pytest.approx(0.040, rel=0.02)
    (tmp_path / "s.txt").write_text("ms\n# comment\n10\n20\n30,ignored\n")
    emp = seconds(EmpiricalDist(file=str(tmp_path / "s.txt")), rng())
    ys = {emp() for _ in range(1000)}
    assert ys == {0.010, 0.020, 0.030}


def test_records_grow_and_keep_defaults() -> None:
    rec = Records(16)
    for i in range(100):
        assert rec.add(float(i), i % 3) == i
    rec.end[5] = 9.0
    out = rec.arrays()
    assert out["arrival"].size == 100 and out["arrival"][99] == 99.0 and out["method"][5] == 2
    assert out["end"][5] == 9.0 and np.isnan(out["end"][6]) and out["agent"][6] == -1
