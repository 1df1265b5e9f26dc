"""``aicp bench --arrivals TRACE``: the live router gets the recorded arrival sequence (methods, deadlines, payload sizes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

from aicp import trace

pytestmark = [pytest.mark.live, pytest.mark.load, pytest.mark.timeout(90)]


def test_recorded_arrivals_drive_the_live_router_in_order(tmp_path: Path) -> None:
    src, again = tmp_path / "recorded.jsonl", tmp_path / "again.jsonl"
    events: list[trace.TraceEvent] = [trace.Header(t=1000.0, v=1, router="r", strategy="round_robin", config={"attempt_timeout_s": 2.0})]
    for i in range(60):
        method = "m.small" if i % 3 else "m.big"
        events.append(trace.Arrive(t=1000.5 + 0.02 * i, task=f"c/{i}", method=method, bytes=40 + 10 * (i % 5),
                                   timeout_ms=4000.0 if method == "m.big" else None))
    src.write_bytes(b"".join(trace.encode(e) for e in events))
    out = subprocess.run(python_cmd("-m", "aicp", "bench", "--arrivals", str(src), "--agents", "2", "--agent-procs", "1",
                                    "--service-time", "constant:1", "--out", str(tmp_path), "--json", str(tmp_path / "s.json"),
                                    "--record", str(again)), capture_output=True, text=True, timeout=80, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads((tmp_path / "s.json").read_text())["results"]["round_robin"]  # the recorded strategy, as none was given
    assert r["submitted"] == r["completed"] == 60 and r["lost"] == 0
    replayed = [e for e in trace.parse(again.read_bytes()) if isinstance(e, trace.Arrive)]
    recorded = [e for e in events if isinstance(e, trace.Arrive)]
    assert [(e.method, e.bytes, e.timeout_ms) for e in replayed] == [(e.method, e.bytes, e.timeout_ms) for e in recorded]
    header = next(e for e in trace.parse(again.read_bytes()) if isinstance(e, trace.Header))
    assert header.config["attempt_timeout_s"] == 2.0
