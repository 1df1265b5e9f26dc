"""How precise a short run's p50 and p99 are: intervals for ``aicp calibrate --grid``.

A live run of the grid lasts 10-40 s. Its p99 rests on its slowest 1% of tasks, and at
50-85% busy those come in bursts: a run of long service draws at one agent makes a queue
that a dozen tasks wait in together. Two runs of the same workload, different seeds, then
differ by more than the goal's 15% (docs/SIMULATOR.md, "How precise is a short run's p99").

* :func:`window_bootstrap`: a 95% interval for a percentile of one run, resampling *time
  windows* of the run (a moving-block bootstrap in time), not single tasks: tasks of one
  window share their queues, so resampling tasks alone would take a burst for independent
  luck and give too narrow an interval.
* :func:`duration_for`: the measured seconds a run needs for a target relative spread of
  its p99, from the spread at a reference length (it falls as one over the square root of
  the length, the p99 being a mean over independent stretches of the run).
* :func:`verdict`: within the goal; a miss the intervals leave undecided (``noise``); or a
  miss beyond them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: resamples of :func:`window_bootstrap` (the interval's ends move by about 1% from one set of resamples to another)
RESAMPLES = 1000
#: log-spaced bins of :func:`window_bootstrap` between a sample's least and greatest value
BINS = 2000


def run_latencies(npz: Path, warmup_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(intended start time s, latency ms) of one load generator's completed tasks after the warm-up, as ``live.summarise`` counts them."""
    import json

    data = np.load(npz)
    codes = json.loads(Path(str(npz) + ".json").read_text())["codes"]
    names = np.array(["lost", *codes], dtype=object)[data["outcome"].astype(np.int64) + 1]
    start = np.minimum(data["intended"], data["sent"])
    ok = (start >= warmup_s) & (names == "ok")
    return start[ok], (data["done"][ok] - start[ok]) * 1000.0


def join_runs(runs: list[tuple[np.ndarray, np.ndarray]], window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Several runs (blocks) as one sample: each run's times shifted past the one before, so no window straddles two runs."""
    ts, vs = [], []
    offset = 0.0
    for t, v in runs:
        if t.size == 0:
            continue
        t0 = float(t.min())
        ts.append(t - t0 + offset)
        vs.append(v)
        offset += float(t.max() - t0) + window_s
        offset = np.ceil(offset / window_s) * window_s  # the next run starts on a window boundary
    if not ts:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ts), np.concatenate(vs)


def window_bootstrap(
    times: np.ndarray, values: np.ndarray, window_s: float, qs: tuple[float, ...] = (50.0, 99.0), resamples: int = RESAMPLES, seed: int = 0
) -> dict[float, tuple[float, float]]:
    """95% intervals (2.5th, 97.5th percentile of the resampled statistic) for percentiles ``qs`` of ``values`` (> 0).

    The run is cut into windows of ``window_s`` by ``times``; each resample draws as many
    windows as the run has, with replacement, and takes the percentiles of their tasks
    pooled. Fewer than 2 windows: no interval (NaN). Each window is held as a histogram
    over ``BINS`` log-spaced bins (a resample's percentile is read to about 0.4% of its value), so
    all resamples are one matrix product: O(resamples x windows x BINS), not a sort per resample.
    """
    nan = {q: (float("nan"), float("nan")) for q in qs}
    ok = np.isfinite(values) & (values > 0)
    times, values = times[ok], values[ok]
    if values.size == 0 or window_s <= 0:
        return nan
    idx = np.floor((times - times.min()) / window_s).astype(np.int64)
    _, win = np.unique(idx, return_inverse=True)
    m = int(win.max()) + 1
    if m < 2:
        return nan
    lo_v, hi_v = float(values.min()), float(values.max())
    edges = np.geomspace(lo_v * 0.999, hi_v * 1.001, BINS + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, BINS - 1)
    hist = np.zeros((m, BINS))
    np.add.at(hist, (win, bins), 1.0)
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, m))
    picks = rng.integers(0, m, (resamples, m))
    np.add.at(weights, (np.repeat(np.arange(resamples), m), picks.ravel()), 1.0)
    cum = np.cumsum(weights @ hist, axis=1)  # resamples x BINS: tasks at or below each bin's upper edge
    stats = np.empty((resamples, len(qs)))
    for i, q in enumerate(qs):
        need = cum[:, -1] * q / 100.0
        k = np.minimum((cum < need[:, None]).sum(axis=1), BINS - 1)  # the bin where the cumulative count reaches q%
        below = np.where(k > 0, cum[np.arange(resamples), k - 1], 0.0)
        inside = cum[np.arange(resamples), k] - below
        frac = np.where(inside > 0, (need - below) / np.where(inside > 0, inside, 1.0), 0.0)
        stats[:, i] = edges[k] * (edges[k + 1] / edges[k]) ** frac  # log-linear within the bin
    lo = np.percentile(stats, 2.5, axis=0)
    hi = np.percentile(stats, 97.5, axis=0)
    return {q: (float(lo[i]), float(hi[i])) for i, q in enumerate(qs)}


def widen(ci: tuple[float, float], value: float, spread: float, z: float = 1.96) -> tuple[float, float]:
    """``ci`` widened to ``value * (1 -+ z * spread)`` where that is wider (either may be unknown: NaN)."""
    if not (np.isfinite(value) and np.isfinite(spread)):
        return ci
    lo, hi = value * (1.0 - z * spread), value * (1.0 + z * spread)
    if not all(np.isfinite(ci)):
        return (lo, hi)
    return (min(ci[0], lo), max(ci[1], hi))


def relative_spread(values: np.ndarray) -> float:
    """Standard deviation over mean of several runs' percentiles (NaN with fewer than two)."""
    v = values[np.isfinite(values)]
    return float(v.std(ddof=1) / v.mean()) if v.size >= 2 and v.mean() > 0 else float("nan")


def duration_for(spread_at_ref: float, ref_s: float, target: float, lo_s: float, hi_s: float) -> float:
    """Measured seconds for a relative spread ``target``, knowing ``spread_at_ref`` at ``ref_s`` (spread ~ 1/sqrt(length)),
    clamped to [``lo_s``, ``hi_s``]; ``lo_s`` if the spread is unknown."""
    if not np.isfinite(spread_at_ref) or spread_at_ref <= 0 or target <= 0:
        return lo_s
    return float(min(hi_s, max(lo_s, ref_s * (spread_at_ref / target) ** 2)))


def allocate(needs: list[float], total_s: float, lo_s: float) -> list[float]:
    """Measured seconds per run: each its need, but if they add up to more than ``total_s``, the longest cut to one
    common length (at least ``lo_s``) so that they add up to ``total_s`` (water-filling: the quiet runs keep theirs)."""
    if sum(needs) <= total_s:
        return list(needs)
    lo, hi = lo_s, max(needs)
    for _ in range(60):  # bisection on the common cap
        mid = (lo + hi) / 2.0
        if sum(max(lo_s, min(n, mid)) for n in needs) > total_s:
            hi = mid
        else:
            lo = mid
    return [max(lo_s, min(n, lo)) for n in needs]


def verdict(pred: float, live: float, live_ci: tuple[float, float], pred_ci: tuple[float, float] | None = None, goal: float = 0.15) -> str:
    """``ok``: ``pred`` within ``goal`` of ``live``. ``noise``: outside, but some pair of values in the two intervals is within
    ``goal`` (the runs are too short to call it a miss). ``MISS``: no such pair."""
    if not (np.isfinite(pred) and np.isfinite(live) and live > 0):
        return "n/a"
    if abs(pred - live) <= goal * live:
        return "ok"
    p_lo, p_hi = pred_ci if pred_ci is not None and all(np.isfinite(pred_ci)) else (pred, pred)
    l_lo, l_hi = live_ci if all(np.isfinite(live_ci)) else (live, live)
    # some x in [l_lo, l_hi] and y in [p_lo, p_hi] with |y - x| <= goal x: the intervals [p_lo, p_hi] and [(1-goal) l_lo, (1+goal) l_hi] meet
    return "noise" if p_lo <= (1 + goal) * l_hi and p_hi >= (1 - goal) * l_lo else "MISS"
