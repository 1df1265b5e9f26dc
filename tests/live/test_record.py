"""``aicp serve --record``: a real router writes its trace; killed with SIGKILL, it leaves a readable prefix."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from live_helpers import ROOT, Proc, python_cmd

from aicp import trace

pytestmark = pytest.mark.live

SERVER_LINE = r"listening on (ws://127\.0\.0\.1:\d+)"


@pytest.mark.parametrize("name", ["run.jsonl", "run.jsonl.gz"])
def test_a_killed_router_leaves_a_readable_trace_with_agent_handler_times(procs: Callable[..., Proc], tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    server = procs("-m", "aicp.server", "--port", "0", "--record", str(path))
    url = server.wait_for_line(SERVER_LINE).group(1)
    agent = procs("-m", "aicp", "agent", "--url", url, "--capability", "work", "--handler", "synthetic", "--service-time", "constant:5",
                  "--id", "rec", "--count", "2")
    agent.wait_for_line("Agent rec-1 registered")
    done = subprocess.run(python_cmd("-m", "aicp", "submit", "work", "{}", "--url", url, "--repeat", "12"),
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    time.sleep(0.6)  # past two flush periods
    server.kill(signal.SIGKILL)
    server.popen.wait(timeout=5)
    events = list(trace.parse(path.read_bytes(), str(path)))
    assert isinstance(events[0], trace.Header)
    assert sorted(e.agent for e in events if isinstance(e, trace.AgentUp)) == ["rec-0", "rec-1"]
    arrivals = [e for e in events if isinstance(e, trace.Arrive)]
    ends = [e for e in events if isinstance(e, trace.End)]
    assert len(arrivals) == 12 and len(ends) == 12 and {e.outcome for e in ends} == {"completed"}
    assert {e.task for e in arrivals} == {e.task for e in ends}
    service = [e.service_ms for e in events if isinstance(e, trace.Reply)]
    # the agents signed their own handler time into each result: about the 5 ms asked for
    assert len(service) == 12 and all(s is not None and 4.0 <= s < 200.0 for s in service)


def test_a_recorded_live_run_replays_under_every_strategy(procs: Callable[..., Proc], tmp_path: Path) -> None:
    """Record live with round_robin; `aicp compare --replay` answers what each strategy would have done on that traffic."""
    path = tmp_path / "live.jsonl"
    server = procs("-m", "aicp.server", "--port", "0", "--record", str(path), "--drain-timeout", "1")
    url = server.wait_for_line(SERVER_LINE).group(1)
    agent = procs("-m", "aicp", "agent", "--url", url, "--capability", "work", "--handler", "synthetic", "--service-time", "exponential:3",
                  "--id", "rp", "--count", "3", "--seed", "5")
    agent.wait_for_line("Agent rp-2 registered")
    done = subprocess.run(python_cmd("-m", "aicp", "submit", "work", "{}", "--url", url, "--repeat", "30"),
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    server.kill(signal.SIGTERM)
    assert server.popen.wait(timeout=10) == 0
    out = tmp_path / "results"
    cmp = subprocess.run(python_cmd("-m", "aicp", "compare", "--replay", str(path), "--replications", "3", "--jobs", "1", "--quiet",
                                    "--out", str(out), "--json", str(tmp_path / "cmp.json")), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    results = json.loads((tmp_path / "cmp.json").read_text())
    strategies = results["results"] if "results" in results else results
    assert {"round_robin", "least_loaded"} <= set(strategies)
    for r in strategies.values():
        assert r["lost"] == 0 and r["tasks"] == 30  # every recorded arrival, once, in every replay
