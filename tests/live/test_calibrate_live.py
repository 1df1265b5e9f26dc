"""``aicp calibrate`` against a real router, agents and load generator: it writes a calibration the simulator loads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

from aicp.sim import stack

pytestmark = [pytest.mark.live, pytest.mark.slow]


def test_calibrate_measures_one_level_from_a_recorded_probe(tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    done = subprocess.run(
        python_cmd(
            "-m",
            "aicp",
            "calibrate",
            "--agents",
            "2",
            "--probe-rates",
            "60",
            "--duration",
            "2",
            "--out",
            str(out),
            "--out-dir",
            str(tmp_path / "runs"),
        ),
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cal = stack.load(out)
    assert [lv.rate_per_s for lv in cal.levels] == [60.0]
    level = cal.levels[0]
    # about 120 tasks, nearly all on an idle agent: one sample each
    assert len(level.client_ms) > 60 and len(level.agent_overhead_ms) > 60 and len(level.wake_ms) > 60
    # the agent sleeps at least its rounded millisecond: a wake-up is never a whole tick early, and the round trip is positive
    assert min(level.wake_ms) > -1.0
    assert min(level.agent_overhead_ms) > 0.0
    assert cal.slot_ms > 0.0
    assert "wake mean" in done.stdout
