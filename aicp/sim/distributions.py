"""Random draws in blocks: numpy fills an array, the simulator pops Python floats.

A numpy call per draw costs about a microsecond; a block of 4096 costs a few
nanoseconds per draw, and ``next()`` on a list iterator is the cheapest way to
hand them out one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from aicp.sim.scenario import ConstantDist, Dist, EmpiricalDist, ExponentialDist, LognormalDist, Scenario

BLOCK = 4096


class Blocks:
    """An endless stream of floats drawn ``BLOCK`` at a time by ``fill(n)``."""

    __slots__ = ("_fill", "_it")

    def __init__(self, fill: Callable[[int], np.ndarray]) -> None:
        self._fill = fill
        self._it: Iterator[float] = iter(())

    def __call__(self) -> float:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self._fill(BLOCK).tolist())
            return next(self._it)


def seconds(dist: Dist, rng: np.random.Generator, scenario: Scenario | None = None) -> Callable[[], float]:
    """A sampler of ``dist`` in seconds (the scenario gives relative paths for empirical files)."""
    mean = dist.mean_ms / 1000.0 if not isinstance(dist, EmpiricalDist) else 0.0
    if isinstance(dist, ConstantDist):
        return lambda: mean
    if isinstance(dist, ExponentialDist):
        if mean == 0.0:
            return lambda: 0.0
        return Blocks(lambda n: rng.exponential(mean, n))
    if isinstance(dist, LognormalDist):
        if mean == 0.0:
            return lambda: 0.0
        mu = math.log(mean) - dist.sigma * dist.sigma / 2.0
        sigma = dist.sigma
        return Blocks(lambda n: rng.lognormal(mu, sigma, n))
    assert isinstance(dist, EmpiricalDist)
    path = scenario.resolve(dist.file) if scenario is not None else Path(dist.file)
    samples = load_samples(path) * (dist.scale / 1000.0)
    return Blocks(lambda n: rng.choice(samples, n))


def mean_seconds(dist: Dist, scenario: Scenario | None = None) -> float:
    if isinstance(dist, EmpiricalDist):
        path = scenario.resolve(dist.file) if scenario is not None else Path(dist.file)
        return float(load_samples(path).mean()) * dist.scale / 1000.0
    return dist.mean_ms / 1000.0


def load_samples(path: Path) -> np.ndarray:
    """Numbers in milliseconds: one per line or the first CSV column; '#' lines and headers are skipped."""
    values: list[float] = []
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cell = line.split(",")[0].strip()
        try:
            values.append(float(cell))
        except ValueError:
            continue  # a header
    if not values:
        raise ValueError(f"{path}: no samples")
    arr = np.asarray(values, dtype=np.float64)
    if (arr < 0).any():
        raise ValueError(f"{path}: negative samples")
    return arr
