"""``aicp bench --via gateway`` at a tiny load, to keep its code path working; the figures come from the benchmark itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import python_cmd
from live_helpers import ROOT

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load]


def test_gateway_and_direct_are_measured_in_one_run(tmp_path: Path) -> None:
    args = ["-m", "aicp", "bench", "--via", "gateway", "--gateway-rate", "50", "--gateway-rounds", "2", "--agents", "2", "--agent-procs", "1", "--concurrency", "4",
            "--duration", "1", "--warmup", "0.3", "--out", str(tmp_path)]
    done = subprocess.run(python_cmd(*args), capture_output=True, text=True, timeout=240, cwd=ROOT)
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "error" not in summary, done.stdout + done.stderr
    via = summary["via_gateway"]
    for key in ("direct_open", "gateway_open", "direct_closed", "gateway_closed"):
        row = via[key]
        assert row["completed"] > 0 and row["lost"] == 0 and row["verify_failures"] == 0 and not row["errors"], (key, row)
    assert via["gateway_open"]["cpu"]["gateway"]["cpu_s"] > 0  # the gateway process did the work, and was charged for it
    assert via["throughput_share"] > 0 and len(via["verdicts"]) == 2
    assert len(via["open_rounds"]) == 2 and len(via["added_p50_rounds_ms"]) == 2  # direct and gateway slices alternate, round by round
    assert via["gateway_open"]["completed"] == sum(r["gateway"]["completed"] for r in via["open_rounds"])
    assert "gateway  closed" in done.stdout
    gen = np.load(run_dir / "via-gateway-open-r0-gen0.npz")  # the HTTP load generator names each answered task (aicp.lab.bench.gateway_legs joins on it)
    assert len(gen["task_ids"]) == len(gen["outcome"]) and all(t for t, o in zip(gen["task_ids"], gen["outcome"]) if o == 0)
    assert "start_clock" in json.loads((run_dir / "via-gateway-open-r0-gen0.npz.json").read_text())
    assert via["gateway_open"]["noise"]["seconds"] > 0 and "stalls" in via["direct_closed"]["noise"]  # the machine's noise, per trial
