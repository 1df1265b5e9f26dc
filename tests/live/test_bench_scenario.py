"""``aicp bench --scenario``: a 2-group scenario with network latency and a crash runs live, faithfully.

The router records the run (``--record``), so the test checks what the router saw:
every agent of both groups with its own capabilities and concurrency, both workloads'
methods, the crashed agent going down and coming back, and one outcome per task.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

from aicp import trace

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load, pytest.mark.timeout(90)]


def test_a_two_group_scenario_with_a_crash_runs_live(tmp_path: Path) -> None:
    rec = tmp_path / "run.jsonl"
    # The shipped file, but fast-0001 starts again at 3.0 s instead of 4.0 s: a fresh interpreter
    # on a busy machine can take more than the 2 s left before the 6 s run ends to register.
    text = (ROOT / "scenarios" / "live_two_groups.toml").read_text()
    assert text.count("until_s = 4.0\n") == 1
    scenario = tmp_path / "live_two_groups.toml"
    scenario.write_text(text.replace("until_s = 4.0\n", "until_s = 3.0\n"))
    out = subprocess.run(python_cmd("-m", "aicp", "bench", "--scenario", str(scenario), "--strategy", "least_loaded",
                                    "--out", str(tmp_path), "--json", str(tmp_path / "s.json"), "--record", str(rec)),
                         capture_output=True, text=True, timeout=80, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    r = summary["results"]["least_loaded"]
    assert r["lost"] == 0 and r["duplicate_outcomes"] == 0 and r["verify_failures"] == 0
    assert r["submitted"] == summary["plan"]["tasks"] > 500
    assert [(s["action"], s["proc"]) for s in r["faults_run"]] == [("kill", "fast-0001"), ("start", "fast-0001")]

    events = list(trace.parse(rec.read_bytes()))
    ups = {e.agent: e for e in events if isinstance(e, trace.AgentUp)}
    assert sorted(ups) == ["fast-0000", "fast-0001", "fast-0002", "slow-0000", "slow-0001"]
    assert ups["fast-0000"].concurrency == 2 and sorted(ups["fast-0000"].capabilities) == ["text.classify", "text.embed"]
    assert ups["slow-0000"].concurrency == 1 and ups["slow-0000"].capabilities == ["text.classify"]
    last_end = max(e.t for e in events if isinstance(e, trace.End))
    assert [e.agent for e in events if isinstance(e, trace.AgentDown) and e.t <= last_end] == ["fast-0001"]  # then the fleet stops
    assert sum(1 for e in events if isinstance(e, trace.AgentUp) and e.agent == "fast-0001") == 2  # it came back
    arrivals = [e for e in events if isinstance(e, trace.Arrive)]
    assert {e.method for e in arrivals} == {"text.classify", "text.embed"}
    assert {e.timeout_ms for e in arrivals if e.method == "text.classify"} == {5000.0}
    ends = [e for e in events if isinstance(e, trace.End)]
    assert len(ends) == len(arrivals) == r["submitted"]
    # only the fast group serves text.embed; the slow group's failures (fail_prob) are retried or end as errors
    assert all(e.agent is None or e.agent.startswith("fast-") for e in ends if e.outcome == "completed" and e.task in
               {a.task for a in arrivals if a.method == "text.embed"})
    assert any(isinstance(e, trace.Reply) and not e.ok and e.agent.startswith("slow-") for e in events)
