"""``aicp plots``: the figures of the evidence, from the latest results, as PNG under ``results/plots/``.

Every figure is built by one function here that takes loaded results and returns
a matplotlib ``Figure`` (no pyplot state, so it works under Agg and inline in a
notebook alike); the notebooks call the same functions. ``aicp plots`` loads the
newest runs, makes any that are missing with a small configuration
(:mod:`aicp.lab.datagen`), and saves:

    strategy_latency_<scenario>.png   latency CCDF and p50/p99/p99.9 with 95% CIs per strategy
    sweep_p99_baseline.png            p99 against offered load per strategy
    failure_timeline_<scenario>.png   throughput, p99 and agents alive over time, faults marked
    bench_latency_throughput.png      live latency against throughput, design targets and the relay
    record_replay_timeline.png        a recorded live run (an agent killed) against its replays, over time
    record_replay_cdf.png             the same, latency CDF (aicp.lab.replay_plots)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from aicp import strategies as strategy_registry
from aicp.lab import datagen, runs
from aicp.sim import results as sim_results

#: the groups ``aicp plots --only`` accepts
GROUPS = ("strategy", "sweep", "failure", "bench", "replay")
_PERCENTILES = (("p50", "p50", "o"), ("p99", "p99", "s"), ("p999", "p99.9", "^"))
_COMPLETED = 1  # sim.metrics.COMPLETED, without importing the simulator's engine
#: a sweep level whose achieved rate is below this share of the offered rate is past saturation (as in aicp bench)
SATURATED_BELOW = 0.9


def strategy_color(name: str) -> Any:
    """One colour per strategy, the same in every figure."""
    import matplotlib

    names = list(strategy_registry.names())
    index = names.index(name) if name in names else len(names) + sum(map(ord, name)) % 5
    return matplotlib.colormaps["tab10"](index % 10)


def _strategies(run: sim_results.Run) -> list[str]:
    in_results = run.summary.get("results") or {}
    listed = [s for s in run.summary.get("strategies") or [] if s in in_results]
    return listed or sorted(in_results)


# ----------------------------------------------------------------------------- (a) latency per strategy
def completed_latencies_ms(run: sim_results.Run, strategy: str) -> np.ndarray:
    """Latencies (ms) of the measured, completed tasks of every replication of ``strategy``, pooled."""
    warmup = float(run.scenario.get("warmup_s", 0.0))
    parts = []
    for label in run.labels:
        if label.rsplit("-r", 1)[0] != strategy or not (run.folder / "records" / f"{label}.npz").is_file():
            continue
        rec = run.records(label)
        keep = (rec["outcome"] == _COMPLETED) & (rec["arrival"] >= warmup)
        parts.append((rec["end"][keep] - rec["arrival"][keep]) * 1000.0)
    return np.concatenate(parts) if parts else np.empty(0)


def ccdf_points(latency_ms: np.ndarray, points: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(x, P(latency > x)) on a log grid of probabilities down to 1/n, so the tail keeps its resolution."""
    n = latency_ms.size
    if n == 0:
        return np.empty(0), np.empty(0)
    exceed = np.logspace(np.log10(1.0 / n), 0.0, points)
    return np.quantile(latency_ms, 1.0 - exceed), exceed


def latency_figure(run: sim_results.Run) -> Figure:
    """Left: the latency CCDF per strategy (log-log). Right: p50, p99, p99.9 per strategy with 95% CIs."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_ccdf, ax_tail = fig.subplots(1, 2, width_ratios=[1.2, 1])
    names = _strategies(run)
    drew = False
    for name in names:
        x, p = ccdf_points(completed_latencies_ms(run, name))
        if x.size:
            ax_ccdf.plot(x, p, color=strategy_color(name), label=name, linewidth=1.5)
            drew = True
    if drew:
        ax_ccdf.set_xscale("log")
        ax_ccdf.set_yscale("log")
        ax_ccdf.legend(fontsize=8, title="strategy", title_fontsize=8)
    else:
        ax_ccdf.text(
            0.5,
            0.5,
            "no per-task records in this run\n(run without --no-records)",
            ha="center",
            va="center",
            transform=ax_ccdf.transAxes,
        )
    ax_ccdf.set_xlabel("latency, arrival to result (ms, log)")
    ax_ccdf.set_ylabel("P(latency > x)  (log)")
    ax_ccdf.set_title("latency distribution (CCDF), replications pooled")
    ax_ccdf.grid(True, which="both", alpha=0.3)

    res = run.summary.get("results") or {}
    xs = np.arange(len(names))
    for j, (key, label, marker) in enumerate(_PERCENTILES):
        ys = np.array([_num((res[n].get("latency_ms") or {}).get(key)) for n in names])
        ci = np.array([_num((res[n].get("latency_ms_ci95") or {}).get(key), 0.0) for n in names])
        ci = np.minimum(ci, ys * 0.999)  # a log axis cannot show an interval reaching zero or below
        ax_tail.errorbar(xs + (j - 1) * 0.22, ys, yerr=ci, fmt=marker, capsize=3, label=label, color=f"C{j}", markersize=5)
    ax_tail.set_yscale("log")
    ax_tail.set_xticks(xs, names, rotation=30, ha="right")
    ax_tail.set_xlabel("strategy")
    ax_tail.set_ylabel("latency (ms, log)")
    reps = run.summary.get("replications", "?")
    ax_tail.set_title(f"tail latency: mean of {reps} replications ± 95% CI")
    ax_tail.legend(fontsize=8)
    ax_tail.grid(True, axis="y", which="both", alpha=0.3)
    fig.suptitle(f"{run.summary.get('scenario', run.folder.parent.name)}: latency per strategy  ({run.folder.name})")
    return fig


# ----------------------------------------------------------------------------- (b) p99 against offered load
def sweep_figure(summary: dict[str, Any], metric: str = "p99") -> Figure:
    """One line per strategy: the ``metric`` latency at each grid point of a sweep, with 95% CIs."""
    axes = list(summary.get("axes") or {})
    axis = datagen.SWEEP_AXIS if datagen.SWEEP_AXIS in axes else (axes[0] if axes else "point")
    rows = summary.get("rows") or []
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for name in dict.fromkeys(r["strategy"] for r in rows):
        mine = sorted((r for r in rows if r["strategy"] == name), key=lambda r: _num(r.get(axis)))
        x = np.array([_num(r.get(axis)) for r in mine])
        y = np.array([_num(r.get(f"latency_{metric}_ms")) for r in mine])
        ci = np.minimum(np.array([_num(r.get(f"latency_{metric}_ms_ci95"), 0.0) for r in mine]), y * 0.999)
        ax.errorbar(x, y, yerr=ci, marker="o", capsize=3, label=name, color=strategy_color(name))
    ax.set_yscale("log")
    ax.set_xlabel("offered load (tasks/s)" if axis.endswith("rate_per_s") else axis)
    ax.set_ylabel(f"{metric.replace('p999', 'p99.9')} latency (ms, log)")
    reps = summary.get("replications", "?")
    ax.set_title(f"{summary.get('scenario', '?')}: {metric} against offered load ({reps} replication(s), ± 95% CI)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="strategy", title_fontsize=8)
    return fig


# ----------------------------------------------------------------------------- (c) failure replay
def timeline_figure(run: sim_results.Run, replication: int = 0) -> Figure:
    """Throughput, p99 and agents alive over simulated time per strategy; fault times from scenario.json."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    ax_thr, ax_p99, ax_up = fig.subplots(3, 1, sharex=True)
    window = run.scenario.get("window_s", "?")
    duration = float(run.scenario.get("duration_s", np.inf))
    for name in _strategies(run):
        label = f"{name}-r{replication}"
        if label not in run.labels:
            continue
        tl = run.timelines(label)
        color = strategy_color(name)
        keep = tl["t_s"] < duration  # the bin after the last arrival holds only the drain: not a throughput
        ax_thr.plot(tl["t_s"][keep], tl["throughput"][keep], color=color, label=name, linewidth=1.2)
        ax_p99.plot(tl["t_s"][keep], tl["p99_ms"][keep], color=color, label=name, linewidth=1.2)
        if "agents_up" in tl:
            ax_up.step(
                tl.get("sample_t_s", np.arange(tl["agents_up"].size)),
                tl["agents_up"],
                where="post",
                color=color,
                label=name,
                linewidth=1.2,
            )
    ax_thr.set_ylabel("throughput (tasks/s)")
    ax_p99.set_ylabel(f"p99 latency (ms, log;\n{window} s sliding window)")
    ax_p99.set_yscale("log")
    ax_up.set_ylabel("agents alive")
    ax_up.set_xlabel("simulated time (s)")
    mark_faults([ax_thr, ax_p99, ax_up], run.scenario)
    warmup = float(run.scenario.get("warmup_s", 0.0))
    for ax in (ax_thr, ax_p99, ax_up):
        if warmup > 0:
            ax.axvspan(0.0, warmup, color="0.5", alpha=0.12, linewidth=0)
        ax.grid(True, alpha=0.3)
    handles, labels = ax_thr.get_legend_handles_labels()
    fault_handles, fault_labels = ax_up.get_legend_handles_labels()
    seen = set(labels)
    for h, lab in zip(fault_handles, fault_labels):
        if lab not in seen:
            handles.append(h)
            labels.append(lab)
            seen.add(lab)
    if warmup > 0:
        handles.append(Rectangle((0, 0), 1, 1, color="0.5", alpha=0.12))
        labels.append("warm-up (not in the statistics)")
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    scenario = run.summary.get("scenario", run.folder.parent.name)
    fig.suptitle(f"{scenario}: failure replay, replication {replication}  ({run.folder.name})")
    return fig


def mark_faults(axes: Sequence[Axes], scenario: dict[str, Any]) -> list[runs.FaultEvent]:
    """Vertical lines at each fault's start (red, dashed) and end (green, dotted) on every axis."""
    events = runs.fault_events(scenario)
    for ax in axes:
        for i, ev in enumerate(events):
            down = ev.kind == "down"
            first = next(e for e in events if e.kind == ev.kind) is ev
            label = (
                (f"fault: {ev.action} {ev.agents}" if down else "fault ends: agents back") if first and ax is axes[-1] else None
            )
            ax.axvline(
                ev.t_s,
                color="tab:red" if down else "tab:green",
                linestyle="--" if down else ":",
                linewidth=1.0,
                alpha=0.8,
                label=label,
                gid=f"fault-{i}",
            )
    return events


# ----------------------------------------------------------------------------- (d) live benchmark
def bench_figure(summary: dict[str, Any]) -> Figure:
    """Live latency against achieved throughput (router and baseline relay), with the design targets."""
    from aicp.lab.bench.live import TARGET_P99_MS, TARGET_THROUGHPUT

    fig = Figure(figsize=(12.5, 5.5), layout="constrained")
    ax = fig.subplots()
    router = runs.bench_curve(summary, "router")
    relay = runs.bench_curve(summary, "relay")
    xs: list[float] = [TARGET_THROUGHPUT]
    ys: list[float] = [TARGET_P99_MS]
    for curve, who, color, marker in ((router, "router", "tab:blue", "o"), (relay, "baseline relay", "0.45", "s")):
        if curve["throughput_per_s"].size == 0:
            continue
        # Past saturation the achieved rate (results inside the measured window) falls below the offered one and
        # the curve would fold back: those levels are shown as crosses, not joined to the curve.
        ok = ~(curve["throughput_per_s"] < SATURATED_BELOW * curve["offered_per_s"])
        thr, p50, p99 = curve["throughput_per_s"], curve["p50_ms"], curve["p99_ms"]
        ax.plot(thr[ok], p99[ok], marker=marker, color=color, label=f"{who} p99 (open-loop sweep)")
        ax.plot(thr[ok], p50[ok], marker=marker, color=color, linestyle="--", markerfacecolor="none", label=f"{who} p50")
        if (~ok).any():
            ax.plot(
                thr[~ok],
                p99[~ok],
                marker="x",
                markersize=9,
                linestyle="none",
                color=color,
                label=f"{who} p99 past saturation (achieved < {SATURATED_BELOW:.0%} of offered)",
            )
        xs += thr.tolist()
        ys += p99.tolist() + p50[ok].tolist()
        if who == "router":
            for x, y, offered in zip(thr, p99, curve["offered_per_s"]):
                ax.annotate(
                    f"{offered:.0f}/s offered", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=7, color=color
                )
    for key, who, color, marker in (("router", "router", "tab:blue", "*"), ("relay", "baseline relay", "0.45", "P")):
        trial = summary.get(key)
        if isinstance(trial, dict) and trial.get("mode") == "closed":
            closed_thr, closed_p99 = _num(trial.get("throughput_per_s")), _num((trial.get("latency_ms") or {}).get("p99"))
            ax.plot(
                [closed_thr],
                [closed_p99],
                marker=marker,
                markersize=13,
                linestyle="none",
                color=color,
                label=f"{who} closed loop, {trial.get('concurrency')} in flight: {closed_thr:.0f} tasks/s",
            )
            xs.append(closed_thr)
            ys.append(closed_p99)
    ax.set_yscale("log")
    finite_y = [y for y in ys if np.isfinite(y) and y > 0]
    finite_x = [x for x in xs if np.isfinite(x)]
    y_lo, y_hi = min(finite_y) / 2.0, max(finite_y) * 2.0
    x_hi = max(finite_x) * 1.1
    ax.add_patch(
        Rectangle(
            (TARGET_THROUGHPUT, y_lo),
            x_hi - TARGET_THROUGHPUT,
            TARGET_P99_MS - y_lo,
            color="tab:green",
            alpha=0.08,
            linewidth=0,
            label="meets both design targets",
        )
    )
    ax.axhline(TARGET_P99_MS, color="tab:red", linestyle="--", linewidth=1, label=f"design target: p99 < {TARGET_P99_MS:.0f} ms")
    ax.axvline(
        TARGET_THROUGHPUT, color="tab:red", linestyle=":", linewidth=1, label=f"design target: ≥ {TARGET_THROUGHPUT:.0f} tasks/s"
    )
    ax.set_xlim(0, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("achieved throughput (tasks/s)")
    ax.set_ylabel("latency from intended send (ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=7)
    cfg = summary.get("config") or {}
    ratio = summary.get("relay_ratio")
    ratio_text = f", router/relay throughput {ratio:.0%}" if isinstance(ratio, int | float) else ""
    ax.set_title(
        f"live benchmark {summary.get('run_id', '?')}: {cfg.get('agents', '?')} agents, service {cfg.get('service_time', '?')}, "
        f"verify {cfg.get('verify', '?')}{ratio_text}",
        fontsize=10,
    )
    return fig


def _num(value: Any, default: float = float("nan")) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


# ----------------------------------------------------------------------------- files
def plot_path(group: str, scenario: str = "", root: str | Path | None = None) -> Path:
    """Where ``aicp plots`` puts a figure: ``<results>/plots/<file>`` (the names in this module's docstring)."""
    names = {
        "strategy": f"strategy_latency_{scenario}.png",
        "sweep": f"sweep_p99_{scenario or datagen.SWEEP_SCENARIO}.png",
        "failure": f"failure_timeline_{scenario}.png",
        "bench": "bench_latency_throughput.png",
        "replay": f"record_replay_{scenario}.png",
    }
    if group not in names:
        raise ValueError(f"unknown plot group {group!r}; known: {', '.join(GROUPS)}")
    return runs.plots_dir(root) / names[group]


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (parents created) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, format="png")
    return p


def write_all(
    results_root: str | Path | None = None,
    out: str | Path | None = None,
    generate: bool = True,
    fast: bool | None = None,
    only: Sequence[str] | None = None,
    say: Callable[[str], None] = print,
) -> tuple[list[Path], list[str]]:
    """Every figure from the newest results (made when missing and ``generate``); returns (PNG paths, problems)."""
    root = Path(results_root) if results_root is not None else runs.results_dir()
    groups = list(only or GROUPS)
    written: list[Path] = []
    problems: list[str] = []

    def find(ensure: Callable[..., Path], *args: Any) -> Path:
        return ensure(*args, out=root, fast=fast, say=say, generate=generate)

    def strategy(scen: str) -> Figure:
        return latency_figure(sim_results.load_run(find(datagen.ensure_compare, scen)))

    def sweep(_: str) -> Figure:
        return sweep_figure(sim_results.load_summary(find(datagen.ensure_sweep)))

    def failure(scen: str) -> Figure:
        return timeline_figure(sim_results.load_run(find(datagen.ensure_compare, scen)))

    def bench(_: str) -> Figure:
        return bench_figure(runs.load_bench(find(datagen.ensure_bench)).summary)

    def replay(what: str) -> Figure:
        from aicp.lab import replay_plots

        recorded, run = replay_plots.load(find(datagen.ensure_record_replay))
        return replay_plots.timeline_figure(recorded, run) if what == "timeline" else replay_plots.cdf_figure(recorded, run)

    jobs: list[tuple[str, str, Callable[[str], Figure]]] = []
    if "strategy" in groups:
        jobs += [("strategy", scen, strategy) for scen in datagen.STRATEGY_SCENARIOS]
    if "sweep" in groups:
        jobs.append(("sweep", datagen.SWEEP_SCENARIO, sweep))
    if "failure" in groups:
        jobs += [("failure", scen, failure) for scen in datagen.FAILURE_SCENARIOS]
    if "bench" in groups:
        jobs.append(("bench", "", bench))
    if "replay" in groups:
        jobs += [("replay", "timeline", replay), ("replay", "cdf", replay)]
    for group, what, make in jobs:
        name = plot_path(group, what, root).name
        try:
            path = save(make(what), (Path(out) if out is not None else runs.plots_dir(root)) / name)
        except Exception as exc:  # one missing or broken result must not cost the other figures
            where = f"{group} {what}".strip()
            problems.append(f"{where}: {type(exc).__name__}: {exc}")
            say(f"no plot for {where}: {type(exc).__name__}: {exc}")
            continue
        written.append(path)
        say(f"wrote {path}")
    return written, problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--results", type=Path, default=None, help=f"results folder to read (default: ${runs.RESULTS_ENV} or results/)")
    add("--out", type=Path, default=None, help="where the PNGs go (default: <results>/plots/)")
    add("--only", action="append", choices=GROUPS, help="make only these figures (repeatable)")
    add("--no-generate", action="store_true", help="never run the simulator or the benchmark; skip figures without data")
    add("--fast", action="store_true", help=f"make missing data with the smallest configuration (same as {datagen.FAST_ENV}=1)")


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    written, problems = write_all(
        args.results, args.out, generate=not args.no_generate, fast=True if args.fast else None, only=args.only
    )
    print(f"{len(written)} plot(s) in {runs.plots_dir(args.results) if args.out is None else args.out}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0
