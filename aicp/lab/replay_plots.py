"""Figures of a recorded live run against its replays in the simulator (notebook 04, ``aicp plots``).

The recorded run comes from its trace (``aicp.lab.traces``: router-side latency, arrival to
outcome); the replays from an ``aicp compare --replay`` run folder (per-task records).
Both share one time axis: seconds from the trace's header. Agents the router lost
while tasks were arriving are marked as red dashed lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from aicp.lab import traces
from aicp.lab.plots import _COMPLETED, _strategies, completed_latencies_ms, strategy_color
from aicp.sim import results as sim_results

REPLAY_SCENARIO = "replay-recorded"


def load(folder: str | Path) -> tuple[traces.RecordedRun, sim_results.Run]:
    """The recording (``recorded.jsonl.gz``) and the newest ``compare --replay`` run in ``folder``."""
    f = Path(folder)
    return traces.load(f / "recorded.jsonl.gz"), sim_results.load_run(sim_results.latest(f, REPLAY_SCENARIO, kind="compare"))


def _windowed(arrive_s: np.ndarray, latency_ms: np.ndarray, window_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window centres, p50, p99) of the latencies of tasks by arrival window; NaN where a window is empty."""
    edges = np.arange(0.0, end_s + window_s, window_s)
    idx = np.digitize(arrive_s, edges) - 1
    p50, p99 = np.full(edges.size - 1, np.nan), np.full(edges.size - 1, np.nan)
    for k in range(edges.size - 1):
        sel = latency_ms[idx == k]
        if sel.size:
            p50[k], p99[k] = np.percentile(sel, 50), np.percentile(sel, 99)
    return (edges[:-1] + edges[1:]) / 2.0, p50, p99


def _replay_tasks(run: sim_results.Run, strategy: str, replication: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rec = run.records(f"{strategy}-r{replication}")
    ok = rec["outcome"] == _COMPLETED
    return rec["arrival"][ok], (rec["end"][ok] - rec["arrival"][ok]) * 1000.0


def _mark_downs(axes: list[Axes], recorded: traces.RecordedRun) -> None:
    for ax in axes:
        for i, (t, agent) in enumerate(recorded.downs()):
            ax.axvline(t, color="tab:red", linestyle="--", linewidth=1.0, label=f"agent lost: {agent}" if i == 0 or ax is not axes[0] else None)


def timeline_figure(recorded: traces.RecordedRun, run: sim_results.Run, window_s: float = 0.25) -> Figure:
    """p50 and p99 latency per arrival window: the recorded live run (black) and each strategy's replay (replication 0)."""
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    ax50, ax99 = fig.subplots(2, 1, sharex=True)
    end = float(np.nanmax(recorded.arrive_s)) + window_s
    t, p50, p99 = _windowed(recorded.arrive_s[recorded.completed], recorded.latency_ms(), window_s, end)
    ax50.plot(t, p50, color="black", linewidth=2.2, label=f"recorded live ({recorded.strategy})")
    ax99.plot(t, p99, color="black", linewidth=2.2)
    for name in _strategies(run):
        if f"{name}-r0" not in run.labels or not (run.folder / "records" / f"{name}-r0.npz").is_file():
            continue
        arrive, lat = _replay_tasks(run, name)
        t, p50, p99 = _windowed(arrive, lat, window_s, end)
        ax50.plot(t, p50, color=strategy_color(name), linewidth=1.2, label=f"replay: {name}")
        ax99.plot(t, p99, color=strategy_color(name), linewidth=1.2)
    _mark_downs([ax50, ax99], recorded)
    ax50.set_ylabel(f"p50 latency (ms, log)\nper {window_s:g} s of arrivals")
    ax99.set_ylabel(f"p99 latency (ms, log)\nper {window_s:g} s of arrivals")
    ax99.set_xlabel("time since the router started recording (s)")
    for ax in (ax50, ax99):
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.legend(*ax50.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.suptitle(f"recorded live run vs its replays under every strategy ({run.folder.name})")
    return fig


def cdf_figure(recorded: traces.RecordedRun, run: sim_results.Run) -> Figure:
    """Latency CDF of the completed tasks: the recorded live run against each strategy's replays (all replications pooled)."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    curves = [(f"recorded live ({recorded.strategy})", recorded.latency_ms(), "black", 2.2)]
    curves += [(f"replay: {n}", completed_latencies_ms(run, n), strategy_color(n), 1.2) for n in _strategies(run)]
    for label, lat, color, width in curves:
        if lat.size == 0:
            continue
        x = np.sort(lat)
        ax.plot(x, np.arange(1, x.size + 1) / x.size, color=color, linewidth=width, label=f"{label}  p50 {np.median(x):.1f}, p99 {np.percentile(x, 99):.1f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency, arrival to outcome at the router (ms, log)")
    ax.set_ylabel("fraction of completed tasks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("latency CDF: the recorded live run and what each strategy would have done on its traffic")
    return fig
