"""The calibrated stack model (aicp/sim/stack.py): what it charges, where, and that it stays off without a calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_helpers import run

from aicp.sim import scenario as scenario_mod
from aicp.sim import stack


def _write(path: Path, levels: list[dict[str, Any]] | None = None, **fields: Any) -> Path:
    """A calibration file; ``fields`` go to its one level unless they are ``v``, ``timer_ms`` or ``slot_ms``."""
    top = {k: fields.pop(k) for k in ("v", "timer_ms", "slot_ms") if k in fields}
    level = {"rate_per_s": 100.0, "wake_ms": [0.5], "agent_overhead_ms": [1.0], "client_ms": [2.0], **fields}
    cal = {"v": 1, "timer_ms": 0.0, "slot_ms": 0.0, **top, "levels": levels if levels is not None else [level]}
    path.write_text(json.dumps(cal))
    return path


def _scenario(
    tmp_path: Path, service: dict[str, Any], calibration: str | None, rate: float = 10.0, agents: int = 1
) -> scenario_mod.Scenario:
    data: dict[str, Any] = {
        "name": "stack",
        "seed": 3,
        "duration_s": 20.0,
        "warmup_s": 1.0,
        "replications": 1,
        "strategies": ["least_loaded"],
        "sign_cost_us": 0.0,
        "verify_cost_us": 0.0,
        "agents": [{"count": agents, "capabilities": ["m"], "concurrency": 1, "service_time": service}],
        "workload": [{"method": "m", "arrival": {"process": "constant", "rate_per_s": rate}}],
        "base_dir": str(tmp_path),
    }
    if calibration is not None:
        data["calibration"] = {"file": calibration}
    return scenario_mod.from_data(data)


def _latencies_ms(result: Any) -> np.ndarray:
    rec = result.records
    done = rec["outcome"] == 1
    return (rec["end"][done] - rec["arrival"][done]) * 1000.0


def test_an_idle_agent_task_costs_client_plus_round_trip_plus_service_plus_wake(tmp_path: Path) -> None:
    _write(tmp_path / "cal.json")
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "cal.json"), "least_loaded"))
    assert lat.size > 150
    np.testing.assert_allclose(lat, 2.0 + 1.0 + 3.0 + 0.5, atol=1e-9)


def test_without_a_calibration_the_latency_is_the_service_alone(tmp_path: Path) -> None:
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, None), "least_loaded"))
    np.testing.assert_allclose(lat, 3.0, atol=1e-9)


def test_the_agent_sleeps_whole_timer_ticks(tmp_path: Path) -> None:
    _write(tmp_path / "cal.json", timer_ms=1.0, wake_ms=[0.0], agent_overhead_ms=[0.0], client_ms=[0.0])
    lat = _latencies_ms(run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.4}, "cal.json"), "least_loaded"))
    np.testing.assert_allclose(lat, 3.0, atol=1e-9)


def test_the_slot_part_holds_the_agent_and_the_rest_is_split_over_the_hops(tmp_path: Path) -> None:
    # slot 0.4 of a 1.0 ms round trip: the agent is busy 3 + 0.5 + 0.4 ms per task, the hops carry 0.3 ms each
    _write(tmp_path / "cal.json", slot_ms=0.4)
    result = run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "cal.json"), "least_loaded")
    np.testing.assert_allclose(_latencies_ms(result), 2.0 + 1.0 + 3.0 + 0.5, atol=1e-9)
    served = result.agents["served"][0]
    assert result.agents["busy_time_s"][0] == pytest.approx(served * 3.9e-3)


def test_calibrated_costs_raise_queueing_at_high_utilisation(tmp_path: Path) -> None:
    # 1 ms more per task on a 4 ms service at 75% busy: the agent is 94% busy and waits grow far beyond 1 ms
    _write(tmp_path / "cal.json", wake_ms=[1.0], agent_overhead_ms=[0.0], client_ms=[0.0])
    service = {"dist": "exponential", "mean_ms": 4.0}
    plain = run(_scenario(tmp_path, service, None, rate=750.0, agents=4), "round_robin").summary["latency_ms"]["p50"]
    cal = run(_scenario(tmp_path, service, "cal.json", rate=750.0, agents=4), "round_robin").summary["latency_ms"]["p50"]
    assert cal > plain + 3.0


def test_a_bad_calibration_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(stack.CalibrationError, match="version 2"):
        stack.load(_write(tmp_path / "v2.json", v=2))
    with pytest.raises(stack.CalibrationError, match="client_ms at 100/s holds no samples"):
        stack.load(_write(tmp_path / "empty.json", client_ms=[]))
    with pytest.raises(scenario_mod.ScenarioError, match=r"calibration\.file"):
        _scenario(tmp_path, {"dist": "constant", "mean_ms": 3.0}, "missing.json")


def test_a_scenario_draws_from_the_levels_around_its_rate(tmp_path: Path) -> None:
    def level(rate: float, wake: float) -> dict[str, Any]:
        return {"rate_per_s": rate, "wake_ms": [wake], "agent_overhead_ms": [0.0], "client_ms": [0.0]}

    _write(tmp_path / "cal.json", levels=[level(400.0, 2.0), level(100.0, 1.0)])  # unsorted on purpose
    cal = stack.load(tmp_path / "cal.json")
    assert [lv.rate_per_s for lv in cal.levels] == [100.0, 400.0]
    for rate, low, high, weight in ((50.0, 100.0, 100.0, 0.0), (250.0, 100.0, 400.0, 0.5), (900.0, 400.0, 400.0, 0.0)):
        lo, hi, w = stack.bracket(cal.levels, rate)
        assert (lo.rate_per_s, hi.rate_per_s, w) == (low, high, weight)
    # 1 ms constant service at 250/s over 8 agents: half the tasks wake 1 ms late, half 2 ms
    lat = _latencies_ms(
        run(_scenario(tmp_path, {"dist": "constant", "mean_ms": 1.0}, "cal.json", rate=250.0, agents=8), "least_loaded")
    )
    assert set(np.round(lat, 6)) == {2.0, 3.0}
    assert abs(np.mean(lat) - 2.5) < 0.05
