"""bench-core's growth table: the machinery, not the figures (no timing assertion here)."""

from __future__ import annotations

import argparse

import pytest

from aicp import strategies
from aicp.lab.bench import core


def test_every_strategy_gets_a_row_per_size_and_the_table_shows_them() -> None:
    rows = core.run_scale([4, 30], repeat=1)
    assert [(r["strategy"], r["agents"]) for r in rows] == [(n, k) for n in strategies.names() for k in (4, 30)]
    assert all(r["in_flight"] == r["agents"] // 2 and r["register_us_per_agent"] > 0 and r["task_us"] > 0 for r in rows)
    table = core.format_scale_table(rows).splitlines()
    assert "4 → 30" in table[0] and len(table) == 2 + len(strategies.names())
    assert [line.split("|")[1].strip() for line in table[2:]] == strategies.names()


def test_agent_counts_are_parsed_and_checked() -> None:
    assert core._sizes("100,1_000, 10000") == [100, 1000, 10000]
    for bad in ("", "ten", "1,100"):
        with pytest.raises(argparse.ArgumentTypeError):
            core._sizes(bad)
