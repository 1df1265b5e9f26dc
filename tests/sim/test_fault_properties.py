"""Property: whatever faults, losses and strategy, every task ends exactly once and nothing is lost."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_helpers import run

from aicp import strategies as registry
from aicp.sim import scenario as scenario_mod
from aicp.sim.metrics import COMPLETED, PENDING

AGENT_IDS = [f"g0-{i:04d}" for i in range(6)]


@st.composite
def faults(draw: st.DrawFn) -> dict[str, Any]:
    action = draw(st.sampled_from(["crash", "recover", "slow", "flap", "partition", "heal", "heartbeat_loss", "misbehave"]))
    at = draw(st.floats(0.0, 8.0))
    fault: dict[str, Any] = {"at_s": at, "action": action}
    fault["agents"] = draw(
        st.one_of(st.integers(1, 6), st.lists(st.sampled_from(AGENT_IDS), min_size=1, max_size=3, unique=True))
    )
    if action not in ("recover", "heal") and draw(st.booleans()):
        fault["until_s"] = at + draw(st.floats(0.1, 6.0))
    if action == "slow":
        fault["factor"] = draw(st.floats(0.5, 10.0))
    if action == "flap":
        fault["period_s"] = draw(st.floats(0.2, 3.0))
    return fault


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fault_list=st.lists(faults(), max_size=5),
    strategy=st.sampled_from(registry.names()),
    loss=st.sampled_from([0.0, 0.02]),
    heartbeats=st.sampled_from(["aggregate", "full"]),
    seed=st.integers(0, 2**16),
)
def test_every_task_ends_exactly_once(
    fault_list: list[dict[str, Any]], strategy: str, loss: float, heartbeats: str, seed: int
) -> None:
    s = scenario_mod.from_data(
        {
            "name": "prop",
            "seed": seed,
            "duration_s": 10.0,
            "heartbeats": heartbeats,
            "network": {"latency": {"dist": "exponential", "mean_ms": 0.5}, "loss": loss, "reconnect_s": 0.5},
            "agents": [
                {"count": 6, "capabilities": ["w"], "concurrency": 2, "service_time": {"dist": "exponential", "mean_ms": 10.0}}
            ],
            "workload": [{"method": "w", "arrival": {"process": "poisson", "rate_per_s": 100.0}, "timeout_ms": 3000.0}],
            "router": {"timeout_ms": 300.0, "heartbeat_s": 0.5, "lease_s": 1.5},
            "faults": fault_list,
        }
    )
    r = run(s, strategy)
    rec = r.records
    summ = r.summary
    assert summ["error"] is None
    assert summ["lost"] == 0 and summ["ended"] == summ["submitted"] == rec["arrival"].size
    assert (rec["outcome"] != PENDING).all()
    router = summ["router"]
    assert router["completed"] == int((rec["outcome"] == COMPLETED).sum())
    assert router["completed"] + sum(router["failed"].values()) == router["submitted"] == summ["submitted"]
    ended = rec["end"]
    assert (ended >= rec["arrival"]).all() and (ended - rec["arrival"] <= 3.0 + 1e-9).all()  # within the task deadline
    assert (rec["attempts"] <= 3).all()
    assert np.isfinite(r.agents["utilisation"]).all()
