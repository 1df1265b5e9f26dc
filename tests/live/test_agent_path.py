"""The agent-path harness (aicp.lab.bench.agent_path) runs the agent's real path and checks its answers."""

from __future__ import annotations

import asyncio

import pytest

from aicp.lab.bench import agent_path
from aicp.live.handlers import Synthetic


def test_every_task_gets_one_signed_result_carrying_its_handler_time() -> None:
    got = asyncio.run(agent_path.run_tasks(20))
    assert got["tasks"] == 20 and got["cpu_s"] > 0.0
    times = got["service_ms"]
    assert len(times) == 20 and all(0.0 <= t < 1000.0 and t == round(t, 4) for t in times)  # ms, to 0.1 µs


def test_the_harness_refuses_results_without_a_handler_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a handler that raises gives failed results, which the harness refuses."""

    def broken(self: Synthetic, payload: object) -> dict[str, object]:
        raise RuntimeError("no result")

    monkeypatch.setattr(Synthetic, "__call__", broken)
    with pytest.raises(RuntimeError, match="missing, failed or carries no handler time"):
        asyncio.run(agent_path.run_tasks(3))
