"""``aicp bench --state-overhead --state-jetstream`` on a tiny load, to keep its code path working; the figures are a benchmark."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

pytest.importorskip("nats")
pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load]


def test_state_overhead_on_jetstream_runs_a_nats_server_per_router_and_loses_nothing(tmp_path: Path) -> None:
    args = ["-m", "aicp", "bench", "--state-overhead", "--state-jetstream", "--rate", "50", "--duration", "1", "--warmup", "0.3",
            "--agents", "2", "--out", str(tmp_path)]
    done = subprocess.run(python_cmd(*args), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = tmp_path.iterdir()
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["lost"] == 0 for r in rows)
    with_state = [r for r in rows if r["recording"]]
    without = [r for r in rows if not r["recording"]]
    # a nats-server ran (and is charged) only next to the routers with state, one store directory each, holding the records
    assert all(r["nats_us_per_task"] is not None for r in with_state) and all(r["nats_us_per_task"] is None for r in without)
    stores = list(run_dir.glob("jetstream-*"))
    assert len(stores) == 3
    for store in stores:
        outcomes = store / "jetstream" / "$G" / "streams" / "KV_aicp_outcomes"
        assert sum(f.stat().st_size for f in outcomes.rglob("*.blk")) > 0, f"no outcome stored in {store}"
