"""Make the data a plot needs when it is missing, with a small, fast configuration.

Each ``ensure_*`` returns the newest matching run folder under the results
folder, and runs the very command a user would type (``python -m aicp ...``)
only when there is none, so a generated run is an ordinary, reproducible result.
Two sizes: the default takes about a minute for everything on a 2-core machine;
``AICP_NOTEBOOK_FAST=1`` (or ``fast=True``) is smaller still, for the test suite.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aicp.lab import runs
from aicp.sim import results as sim_results

FAST_ENV = "AICP_NOTEBOOK_FAST"

#: scenarios compared per strategy (latency distributions), and the failure replays
STRATEGY_SCENARIOS = ("baseline", "heterogeneous")
FAILURE_SCENARIOS = ("crash_storm", "flapping")
#: the swept scenario and axis for p99 against offered load
SWEEP_SCENARIO = "baseline"
SWEEP_AXIS = "workload.0.arrival.rate_per_s"

_FAST_STRATEGIES = ("round_robin", "least_loaded", "power_of_two")


def fast_mode() -> bool:
    return os.environ.get(FAST_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _fast(fast: bool | None) -> bool:
    return fast_mode() if fast is None else fast


def _strategies(fast: bool) -> list[str]:
    return [a for name in _FAST_STRATEGIES for a in ("--strategy", name)] if fast else []


def compare_argv(scenario: str, out: Path, fast: bool) -> list[str]:
    """``aicp compare`` of a scenario, shortened; failure replays keep their full length so the faults happen."""
    argv = ["compare", str(runs.scenarios_dir() / f"{scenario}.toml"), "--out", str(out), "--quiet"]
    if scenario in FAILURE_SCENARIOS:
        argv += ["--replications", "1"]
        return argv + (["--strategy", "round_robin", "--strategy", "least_loaded"] if fast else [])
    if fast:
        return [*argv, "--set", "duration_s=6", "--set", "warmup_s=1", "--replications", "2", *_strategies(fast)]
    return [*argv, "--set", "duration_s=12", "--set", "warmup_s=2", "--replications", "3"]


def sweep_argv(out: Path, fast: bool) -> list[str]:
    """``aicp sweep`` of the offered load on ``baseline`` (50 agents of 25 tasks/s: capacity 1250 tasks/s)."""
    rates = "700,1150" if fast else "600,900,1100,1200"
    argv = [
        "sweep",
        str(runs.scenarios_dir() / f"{SWEEP_SCENARIO}.toml"),
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"{SWEEP_AXIS}={rates}",
    ]
    if fast:
        return [*argv, "--set", "duration_s=5", "--set", "warmup_s=1", "--replications", "1", *_strategies(fast)]
    return [*argv, "--set", "duration_s=6", "--set", "warmup_s=1", "--replications", "3"]


def bench_argv(out: Path, fast: bool) -> list[str]:
    """A short ``aicp bench --sweep --baseline``: router and relay, a few open-loop rates up to saturation."""
    argv = ["bench", "--sweep", "--baseline", "--out", str(out / "bench"), "--agent-procs", "1"]
    if fast:
        return [*argv, "--agents", "2", "--sweep-rates", "300,1500", "--duration", "1", "--warmup", "0.3", "--concurrency", "16"]
    return [*argv, "--agents", "4", "--sweep-rates", "250,1000,2000,3000,4000", "--duration", "1.5", "--warmup", "0.5"]


def command_line(argv: Sequence[str]) -> str:
    """The shell command a user types to reproduce ``argv`` (paths shown relative to the checkout)."""
    root = str(runs.REPO_ROOT) + os.sep
    return "aicp " + " ".join(shlex.quote(a[len(root) :] if a.startswith(root) else a) for a in argv)


def _run(argv: list[str], say: Callable[[str], None], generate: bool) -> None:
    if not generate:
        raise FileNotFoundError(f"no data, and generating it is off; it comes from: {command_line(argv)}")
    say(f"generating (small configuration): {command_line(argv)}")
    # a child process runs it exactly as typed (and keeps the lab from importing the command line above it)
    rc = subprocess.run([sys.executable, "-m", "aicp", *argv], check=False).returncode
    if rc not in (0, 1):  # 1 = the run finished but reported an error; its folder still holds what it had
        raise RuntimeError(f"{command_line(argv)} exited with {rc}")


def ensure_compare(
    scenario: str,
    out: str | Path | None = None,
    fast: bool | None = None,
    say: Callable[[str], None] = print,
    generate: bool = True,
) -> Path:
    """The newest ``aicp compare``/``aicp sim`` run of ``scenario``; runs a small one when there is none."""
    base = Path(out) if out is not None else runs.results_dir()
    try:
        return sim_results.latest(base, scenario, kind=("compare", "sim"))
    except FileNotFoundError:
        _run(compare_argv(scenario, base, _fast(fast)), say, generate)
        return sim_results.latest(base, scenario, kind=("compare", "sim"))


def ensure_sweep(
    out: str | Path | None = None, fast: bool | None = None, say: Callable[[str], None] = print, generate: bool = True
) -> Path:
    """The newest ``aicp sweep`` of ``baseline`` over the offered load; runs a small one when there is none."""
    base = Path(out) if out is not None else runs.results_dir()
    try:
        return _latest_load_sweep(base)
    except FileNotFoundError:
        _run(sweep_argv(base, _fast(fast)), say, generate)
        return _latest_load_sweep(base)


def _latest_load_sweep(base: Path) -> Path:
    """The newest sweep of ``baseline`` whose grid varies the offered load."""
    folder = base / SWEEP_SCENARIO
    sweeps = sorted(p for p in folder.iterdir() if sim_results.run_kind(p) == "sweep") if folder.is_dir() else []
    for run in reversed(sweeps):
        if (run / "summary.json").is_file() and SWEEP_AXIS in (sim_results.load_summary(run).get("axes") or {}):
            return run
    raise FileNotFoundError(f"no sweep of {SWEEP_SCENARIO} over {SWEEP_AXIS} under {base}")


def ensure_bench(
    out: str | Path | None = None, fast: bool | None = None, say: Callable[[str], None] = print, generate: bool = True
) -> Path:
    """The newest ``aicp bench`` run with a sweep; runs a short one when there is none."""
    base = Path(out) if out is not None else runs.results_dir()
    try:
        return runs.latest_bench(base / "bench", need_sweep=True).folder
    except FileNotFoundError:
        _run(bench_argv(base, _fast(fast)), say, generate)
        return runs.latest_bench(base / "bench", need_sweep=True).folder


# ----------------------------------------------------------------------------- record and replay (notebook 04)
RECORD_SCENARIO = "live_kill"
RECORD_FOLDER = "record_replay"
RECORD_STRATEGY = "round_robin"


def record_argv(folder: Path, fast: bool) -> list[str]:
    """A short live run of ``live_kill`` (an agent SIGKILLed in the middle), recorded by the router."""
    argv = ["bench", "--scenario", str(runs.scenarios_dir() / f"{RECORD_SCENARIO}.toml"), "--strategy", RECORD_STRATEGY,
            "--record", str(folder / "recorded.jsonl.gz"), "--out", str(folder / "bench")]
    return [*argv, "--duration", "2", "--warmup", "0.5"] if fast else argv


def replay_argv(folder: Path, fast: bool) -> list[str]:
    """``aicp compare --replay`` of that recording: every strategy on the recorded traffic."""
    argv = ["compare", "--replay", str(folder / "recorded.jsonl.gz"), "--out", str(folder), "--quiet"]
    return [*argv, "--replications", "2"] if fast else argv


def ensure_record_replay(
    out: str | Path | None = None, fast: bool | None = None, say: Callable[[str], None] = print, generate: bool = True
) -> Path:
    """The folder holding ``recorded.jsonl.gz`` and its ``aicp compare --replay`` run; records and replays when missing."""
    base = Path(out) if out is not None else runs.results_dir()
    folder = base / RECORD_FOLDER
    if not (folder / "recorded.jsonl.gz").is_file():
        _run(record_argv(folder, _fast(fast)), say, generate)
    try:
        sim_results.latest(folder, "replay-recorded", kind="compare")
    except FileNotFoundError:
        _run(replay_argv(folder, _fast(fast)), say, generate)
    return folder
