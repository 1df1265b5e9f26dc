"""The machine-noise helper of every bench: the steal share from /proc/stat, and merging windows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aicp.lab.bench import noise
from aicp.lab.bench.live import Fleet

SAMPLE = """cpu  1000 10 500 8000 20 0 30 400 50 0
cpu0 500 5 250 4000 10 0 15 200 25 0
cpu1 500 5 250 4000 10 0 15 200 25 0
intr 12345 0 0
ctxt 999
"""
LATER = """cpu  1100 10 550 8200 20 0 30 520 60 0
cpu0 550 5 275 4100 10 0 15 260 30 0
"""


def test_the_aggregate_cpu_line_is_parsed_by_column_name() -> None:
    times = noise.parse_cpu_times(SAMPLE)
    assert times is not None
    assert times["user"] == 1000 and times["idle"] == 8000 and times["steal"] == 400 and times["guest"] == 50
    assert noise.parse_cpu_times("intr 1 2\n") is None


def test_steal_share_is_steal_over_all_ticks_without_guest_counted_twice() -> None:
    # deltas: user 100, system 50, idle 200, steal 120 (guest 10 is inside user already): 120 / 470
    share = noise.steal_share(noise.parse_cpu_times(SAMPLE), noise.parse_cpu_times(LATER))
    assert share == pytest.approx(120 / 470)
    assert noise.steal_share(None, noise.parse_cpu_times(LATER)) is None
    same = noise.parse_cpu_times(SAMPLE)
    assert noise.steal_share(same, same) is None  # no tick passed
    old_kernel = noise.parse_cpu_times("cpu 1 2 3 4\n")
    assert noise.steal_share(old_kernel, old_kernel) is None  # no steal column: unknown, not 0


def test_format_says_unknown_where_nothing_was_measured() -> None:
    assert noise.format_noise(None) == "machine noise unknown"
    assert noise.format_noise({"steal_share": None}) == "steal unknown, stalls unknown"
    text = noise.format_noise({"steal_share": 0.41, "stalls": 3, "stall_total_ms": 85.0, "stall_max_ms": 40.0, "stall_threshold_ms": 10.0})
    assert text == "steal 41%, 3 stalls > 10 ms (total 85 ms, max 40 ms)"


def test_merged_windows_weight_steal_by_seconds_and_add_stalls() -> None:
    a = {"seconds": 1.0, "steal_share": 0.2, "stalls": 1, "stall_total_ms": 20.0, "stall_max_ms": 20.0, "stall_threshold_ms": 10.0,
         "stall_list": [[5.0, 20.0]]}
    b = {"seconds": 3.0, "steal_share": 0.6, "stalls": 2, "stall_total_ms": 50.0, "stall_max_ms": 30.0, "stall_threshold_ms": 10.0,
         "stall_list": [[2.0, 30.0], [9.0, 20.0]]}
    m = noise.merge_noise([a, b])
    assert m is not None
    assert m["steal_share"] == pytest.approx(0.5) and m["seconds"] == 4.0
    assert (m["stalls"], m["stall_total_ms"], m["stall_max_ms"]) == (3, 70.0, 30.0)
    assert m["stall_list"] == [[2.0, 30.0], [5.0, 20.0], [9.0, 20.0]]
    assert noise.merge_noise([]) is None


def test_a_window_lists_only_the_stalls_that_ended_in_it() -> None:
    probe = noise.StallProbe(ends=[1.0, 2.0, 3.0], lengths=[0.011, 0.02, 0.05])
    assert probe.between(1.5, 3.0) == ([2.0], [0.02])


def test_busy_seconds_are_the_work_columns_of_every_cpu() -> None:
    # deltas: user 100, nice 0, system 50, irq 0, softirq 0 (idle, iowait, steal and guest are not work of their own)
    assert noise.busy_s(noise.parse_cpu_times(SAMPLE), noise.parse_cpu_times(LATER), ticks_per_s=100) == pytest.approx(1.5)
    assert noise.busy_s(None, noise.parse_cpu_times(LATER)) is None
    old_kernel = noise.parse_cpu_times("cpu 1 2 3 4\n")  # no irq/softirq columns: unknown
    assert noise.busy_s(old_kernel, old_kernel) is None


def test_other_processes_are_what_the_machine_used_beyond_ours() -> None:
    assert noise.others_cores(3.0, 1.0, 4.0) == pytest.approx(0.5)
    assert noise.others_cores(1.0, 1.02, 4.0) == 0.0  # tick rounding never gives a negative share
    assert noise.others_cores(None, 1.0, 4.0) is None and noise.others_cores(1.0, 0.0, 0.0) is None
    text = noise.format_noise({"steal_share": 0.0, "others_cores": 0.524})
    assert text == "steal 0%, stalls unknown, other processes 0.52 cores"
    merged = noise.merge_noise([{"seconds": 1.0, "steal_share": 0.0, "others_cores": 0.2}, {"seconds": 3.0, "steal_share": 0.0, "others_cores": 0.6},
                                {"seconds": 4.0, "steal_share": 0.0}])
    assert merged is not None and merged["others_cores"] == pytest.approx(0.5)


BURN = """
import sys, time
while time.process_time() < {cpu}:
    pass
open(sys.argv[1], "w").close()
time.sleep(float(sys.argv[2]))
"""


def test_a_fleets_cpu_counts_as_ours_whether_its_process_runs_or_was_reaped(tmp_path: Path) -> None:
    """Two processes each burn 0.3 s of CPU after the mark: one is still running at the end of the window (read from
    /proc), the other ended and was reaped (getrusage of children); neither may count as another process's CPU."""
    meter = noise.NoiseMeter(probe=False)
    fleet = Fleet(tmp_path, noise=meter)
    try:
        mark = fleet.mark_noise()
        assert mark is not None
        running = fleet.spawn("agents", ["-c", BURN.format(cpu=0.3), str(tmp_path / "a"), "30"])
        ended = fleet.spawn("loadgen", ["-c", BURN.format(cpu=0.3), str(tmp_path / "b"), "0"])
        ended.popen.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not (tmp_path / "a").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.popen.poll() is None
        got = fleet.noise_since(mark)
        assert got is not None
        assert got["ours_cores"] * got["seconds"] >= 0.58  # 2 x 0.3 s, less a clock tick each
        if got["others_cores"] is not None:
            assert got["others_cores"] >= 0.0
    finally:
        fleet.stop()


def test_a_run_shared_with_other_processes_says_so_and_why_nice_did_not_help(tmp_path: Path) -> None:
    on, off = tmp_path / "on", tmp_path / "off"
    on.write_text("1\n")
    off.write_text("0\n")
    assert noise.autogroup_note(None, on) is None and noise.autogroup_note(0.1, on) is None
    grouped = noise.autogroup_note(0.94, on)
    assert grouped is not None and "0.94 cores" in grouped and "/proc/self/autogroup" in grouped
    plain = noise.autogroup_note(0.94, off)
    assert plain is not None and "0.94 cores" in plain and "autogroup" not in plain
    assert noise.autogroup_note(0.94, tmp_path / "missing") == plain
