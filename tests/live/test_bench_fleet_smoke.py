"""``aicp bench-fleet`` on two tiny fleets, to keep its code path working; the 10,000-agent run is a benchmark."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load]


def test_two_fleets_register_idle_and_route_in_one_run(tmp_path: Path) -> None:
    args = ["-m", "aicp", "bench-fleet", "--agents", "2,80", "--agent-procs", "2", "--heartbeat", "0.5", "--idle", "2",
            "--duration", "1", "--warmup", "0.3", "--concurrency", "8", "--out", str(tmp_path)]
    done = subprocess.run(python_cmd(*args), capture_output=True, text=True, timeout=120, cwd=ROOT)
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "error" not in summary, done.stdout + done.stderr
    small, big = summary["fleets"]
    assert (small["agents"], big["agents"]) == (2, 80)
    for row in (small, big):
        assert row["register_s"] > 0 and row["router_rss_mb"]["registered"] > 0
        assert row["routing"]["completed"] > 0 and row["routing"]["lost"] == 0
    # 80 agents beating twice a second for 2 s (about 320 frames, well over the 10 ms tick of process CPU
    # accounting): the router saw their heartbeats and was charged CPU for them
    assert big["idle_frames"] >= 160 and big["idle_cpu_percent"]["router"] > 0
    assert big["throughput_ratio_to_first"] > 0 and {v["check"] for v in summary["verdicts"]}
