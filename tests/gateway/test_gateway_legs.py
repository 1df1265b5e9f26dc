"""The gateway's per-task timestamps (aicp.gateway.legs) and the legs tool's reading of a router trace."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from aicp import trace as aicp_trace
from aicp.gateway.legs import LEGS, Legs
from aicp.lab.bench.gateway_legs import router_times


def test_legs_are_off_without_the_variable() -> None:
    assert "AICP_GATEWAY_LEGS" not in os.environ
    assert LEGS is None  # every point in the gateway is then one comparison


def test_legs_note_each_task_in_order_and_dump_them(tmp_path: Path) -> None:
    legs = Legs(str(tmp_path / "legs.json"))
    legs.arrived, legs.parsed = 1.0, 2.0
    legs.frame_out("t1", at_once=True)
    legs.arrived, legs.parsed = 5.0, 6.0
    legs.frame_out("t2", at_once=False)
    legs.result_in = 9.0
    legs.answered("t1")
    legs.answered("unknown")  # a task submitted before the legs began: ignored
    legs.dump()
    rows = json.loads((tmp_path / "legs.json").read_text())
    assert set(rows) == {"t1", "t2"}
    arrived, parsed, out, at_once, result, answered = rows["t1"]
    assert (arrived, parsed, at_once, result) == (1.0, 2.0, 1.0, 9.0) and parsed <= out <= answered <= time.perf_counter()
    assert rows["t2"][:2] == [5.0, 6.0] and rows["t2"][3:] == [0.0, 0.0, 0.0]  # not answered yet, not written at once


def test_a_process_with_the_variable_writes_its_legs_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "legs.json"
    code = "from aicp.gateway.legs import LEGS; LEGS.parsed = 1.0; LEGS.frame_out('t9', True)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "AICP_GATEWAY_LEGS": str(out)}, check=True, timeout=60)
    assert list(json.loads(out.read_text())) == ["t9"]


def test_router_times_join_arrive_and_end_by_task_id_on_the_perf_counter_clock(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl.gz"
    now = time.time()
    events = [aicp_trace.Header(t=now, v=aicp_trace.TRACE_VERSION, router="r", strategy="round_robin"),
              aicp_trace.Arrive(t=now + 1.0, task="ctl\nA", method="m", bytes=2), aicp_trace.Dispatch(t=now + 1.1, task="ctl\nA", agent="a", attempt=1),
              aicp_trace.Arrive(t=now + 2.0, task="gw\nB", method="m", bytes=2), aicp_trace.End(t=now + 1.5, task="ctl\nA", outcome="completed", attempts=1)]
    with gzip.open(trace, "wb") as f:  # as the router writes it (aicp.trace.encode), with a line cut by a crash at the end
        f.write(b"".join(aicp_trace.encode(e) for e in events) + b'{"e": "arr')
    got = router_times(trace)
    assert list(got) == ["A"]  # B never ended
    arrive, end = got["A"]
    assert abs(end - arrive - 0.5) < 1e-6
    assert abs(arrive - (time.perf_counter() + 1.0)) < 0.5  # on this process's perf_counter clock
