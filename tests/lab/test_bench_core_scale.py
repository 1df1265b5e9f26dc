"""bench-core's growth table: the machinery, not the figures (no timing assertion here)."""

from __future__ import annotations

import argparse

import pytest

from aicp import strategies
from aicp.lab.bench import core


def test_every_strategy_gets_a_row_per_size_and_the_table_shows_them() -> None:
    rows = core.run_scale([30, 4], repeat=2, cycles=50, min_registrations=200)
    assert [(r["strategy"], r["agents"]) for r in rows] == [(n, k) for n in strategies.names() for k in (30, 4)]
    assert all(r["in_flight"] == r["agents"] // 2 and r["register_us_per_agent"] > 0 and r["task_us"] > 0 for r in rows)
    assert all(len(r["register_us_rounds"]) == len(r["task_us_rounds"]) == 2 for r in rows)
    table = core.format_scale_table(rows).splitlines()
    assert "4 → 30" in table[0] and len(table) == 2 + len(strategies.names())
    assert [line.split("|")[1].strip() for line in table[2:]] == strategies.names()


def test_growth_is_the_median_of_each_rounds_own_ratio() -> None:
    rows = [
        {"strategy": "s", "agents": 100, "register_us_rounds": [1.0, 2.0, 4.0], "task_us_rounds": [10.0, 10.0, 10.0]},
        {"strategy": "s", "agents": 500, "register_us_rounds": [9.0, 9.0, 9.0], "task_us_rounds": [1.0, 1.0, 1.0]},
        {"strategy": "s", "agents": 1000, "register_us_rounds": [3.0, 3.0, 12.0], "task_us_rounds": [20.0, 40.0, 10.0]},
    ]
    [g] = core.scale_growth(rows)
    assert (g["from"], g["to"]) == (100, 1000)
    assert g["register_growth_rounds"] == [3.0, 1.5, 3.0] and g["register_growth"] == 3.0
    assert g["task_growth_rounds"] == [2.0, 4.0, 1.0] and g["task_growth"] == 2.0


def test_agent_counts_are_parsed_and_checked() -> None:
    assert core._sizes("100,1_000, 10000") == [100, 1000, 10000]
    for bad in ("", "ten", "1,100"):
        with pytest.raises(argparse.ArgumentTypeError):
            core._sizes(bad)
