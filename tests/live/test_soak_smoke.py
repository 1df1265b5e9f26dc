"""``aicp soak`` for 4 seconds, to keep its code path working; ``make soak`` runs the real minutes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load]


def test_a_short_soak_kills_agents_and_loses_nothing(tmp_path: Path) -> None:
    args = ["-m", "aicp", "soak", "--duration", "4", "--rate", "150", "--agents", "3", "--kill-every", "0.8", "--down", "0.4",
            "--task-timeout", "5", "--seed", "7", "--out", str(tmp_path)]
    done = subprocess.run(python_cmd(*args), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["lost"] == 0 and summary["duplicate_outcomes"] == 0
    assert summary["kills"] >= 1 and summary["restarts"] == summary["kills"]
    assert summary["completed"] > 0 and summary["completed"] + sum(summary["errors"].values()) == summary["submitted"]
    assert summary["router"]["accepted"] == summary["router"]["ended"] and summary["router"]["in_flight_at_end"] == 0
    assert summary["router_rss_start_bytes"] > 0 and summary["router_rss_end_bytes"] > 0
    assert "nothing lost" in done.stdout
