from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aicp.sim import scenario as scenario_mod
from aicp.sim.engine import RunResult, Simulation
from aicp.sim.scenario import Scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHIPPED = sorted(p.stem for p in SCENARIOS.glob("*.toml"))


def load(name: str, **overrides: Any) -> Scenario:
    return scenario_mod.load(SCENARIOS / f"{name}.toml", overrides or None)


def run(s: Scenario, strategy: str = "round_robin", replication: int = 0, trace: bool = False) -> RunResult:
    return Simulation(s, strategy, np.random.SeedSequence(s.seed, spawn_key=(replication,)), trace=trace).run()


def tiny(s: Scenario, tasks: float = 2000.0, agents: int = 2000) -> Scenario:
    """The same scenario (faults, timings) with arrival rates scaled down to about ``tasks`` tasks.

    A fleet larger than ``agents`` shrinks to that size, and faults that pick a number
    of agents pick the same share of it."""
    from aicp.sim.workload import expected_count

    expected = sum(expected_count(w.arrival, s.duration_s) for w in s.workload)
    factor = min(1.0, tasks / max(expected, 1.0))
    overrides: dict[str, Any] = {}
    total = sum(g.count for g in s.agents)
    if total > agents:
        share = agents / total
        for i, g in enumerate(s.agents):
            overrides[f"agents.{i}.count"] = max(1, int(g.count * share))
        for i, f in enumerate(s.faults):
            if isinstance(f.agents, int):
                overrides[f"faults.{i}.agents"] = max(1, int(f.agents * share))
    for i, w in enumerate(s.workload):
        for key in ("rate_per_s", "to_rate_per_s", "off_rate_per_s"):
            value = getattr(w.arrival, key, None)
            if value:
                overrides[f"workload.{i}.arrival.{key}"] = value * factor
    return scenario_mod.with_overrides(s, overrides)
