"""``aicp bench-fleet``'s warm-up: long enough for round robin to reach every agent of a large fleet before the window."""

from __future__ import annotations

import argparse

from aicp.lab.bench import fleet


def _cfg(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fleet.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_auto_warmup_reaches_every_agent_at_the_first_fleets_throughput_within_bounds() -> None:
    cfg = _cfg()
    assert fleet.warmup_for(8, cfg, None) == 2.0  # the first fleet
    assert fleet.warmup_for(10_000, cfg, 1600.0) == 10_000 / 1600.0
    assert fleet.warmup_for(100, cfg, 1600.0) == 2.0
    assert fleet.warmup_for(100_000, cfg, 1600.0) == 20.0


def test_an_explicit_warmup_applies_to_every_fleet() -> None:
    cfg = _cfg("--warmup", "0.5")
    assert fleet.warmup_for(8, cfg, None) == fleet.warmup_for(10_000, cfg, 1600.0) == 0.5
