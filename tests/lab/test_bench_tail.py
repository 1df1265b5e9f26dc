"""aicp.lab.bench.tail: each task's latency split by hop, from load-generator samples and a router trace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aicp import trace
from aicp.lab.bench.tail import HOPS, report, split

T0 = 1_700_000_000.0  # the generator's time 0 on the router's clock


def _run(tmp_path: Path, agent_ms: list[float]) -> tuple[Path, list[trace.TraceEvent]]:
    """Tasks 1 ms apart from 1 s on; hops 0.2 (lag), 0.3 (to router), agent_ms[i], 0.4 (back) ms."""
    n = len(agent_ms)
    intended = 1.0 + 0.001 * np.arange(n)
    sent = intended + 0.0002
    events: list[trace.TraceEvent] = []
    done = np.empty(n)
    for i, at_agent in enumerate(agent_ms):
        arrive = T0 + sent[i] + 0.0003
        result = arrive + at_agent / 1e3
        key = f"gen-0\nt{i}"
        events += [trace.Arrive(t=arrive, task=key, method="m", bytes=10), trace.Dispatch(t=arrive, task=key, agent="a", attempt=1),
                   trace.Reply(t=result, task=key, agent="a", ok=True), trace.End(t=result, task=key, outcome="completed", attempts=1)]
        done[i] = result - T0 + 0.0004
    np.savez(tmp_path / "router-main-gen0.npz", intended=intended, sent=sent, done=done, outcome=np.zeros(n, np.int16),
             task_ids=np.array([f"t{i}" for i in range(n)]))
    (tmp_path / "router-main-gen0.npz.json").write_text(json.dumps({"id": "gen-0", "start_wall": T0, "warmup_s": 0.5}))
    return tmp_path, events


def test_hops_add_up_and_the_slow_hop_is_named(tmp_path: Path) -> None:
    agent_ms = [1.0] * 300
    agent_ms[150] = 25.0  # one task held at its agent
    agent_ms[151] = 30.0
    agent_ms[152] = 28.0
    s = split(*_run(tmp_path, agent_ms), tag="router-main")
    assert s.total_ms.size == 300
    np.testing.assert_allclose(s.hops_ms.sum(axis=1), s.total_ms, atol=1e-3)  # µs: the router's clock is ~1.7e9 s
    np.testing.assert_allclose(s.hops_ms[:, 0], 0.2, atol=1e-3)
    np.testing.assert_allclose(s.hops_ms[:, 3], 0.4, atol=1e-3)
    slow = np.argmax(s.total_ms)
    assert HOPS[int(np.argmax(s.hops_ms[slow]))] == "at agent"
    text = "\n".join(report(s))
    assert ">= p99" in text and "1 burst(s)" in text


def test_tasks_in_the_warm_up_or_missing_from_the_trace_are_left_out(tmp_path: Path) -> None:
    run, events = _run(tmp_path, [1.0] * 50)
    kept = [e for e in events if not (isinstance(e, trace.End) and e.task == "gen-0\nt7")]
    meta = json.loads((run / "router-main-gen0.npz.json").read_text())
    meta["warmup_s"] = 1.01  # the first 10 tasks are warm-up
    (run / "router-main-gen0.npz.json").write_text(json.dumps(meta))
    assert split(run, kept, "router-main").total_ms.size == 40


def test_open_loop_latency_charges_a_late_send_and_never_credits_an_early_one(tmp_path: Path) -> None:
    from aicp.lab.bench.live import Trial, summarise

    out = tmp_path / "g0.npz"
    # intended 1.0 sent 0.9995 (early) done 1.002; intended 1.1 sent 1.105 (5 ms late) done 1.106
    np.savez(out, intended=np.array([1.0, 1.1]), sent=np.array([0.9995, 1.105]), done=np.array([1.002, 1.106]), outcome=np.zeros(2, np.int16))
    (tmp_path / "g0.npz.json").write_text(json.dumps({"codes": ["ok"], "lost": 0, "duplicate_outcomes": 0, "verify_failures": 0,
                                                      "submitted": 2, "cpu_s": 0.0, "wall_s": 2.0}))
    got = summarise([out], Trial("open", rate=2.0, duration=1.0, warmup=0.5), {})
    assert got["latency_ms"]["max"] == pytest.approx(6.0)  # from the intended time: the 5 ms of lag count
    assert got["latency_ms"]["p50"] == pytest.approx((2.5 + 6.0) / 2)  # the early one from its send: 2.5 ms, not 2.0


def test_tasks_in_flight_during_a_probe_stall_are_counted_per_row(tmp_path: Path) -> None:
    from aicp.lab.bench.tail import in_a_stall, stalls_of_run

    agent_ms = [1.0] * 300
    agent_ms[150] = 40.0  # the slow task runs from about T0 + 1.150 to T0 + 1.1909
    s = split(*_run(tmp_path, agent_ms), tag="router-main")
    # one 30 ms stall inside the slow task's flight; one before any task started
    (tmp_path / "summary.json").write_text(json.dumps({"noise": {"stall_list": [[T0 + 1.18, 30.0], [T0 + 0.2, 50.0]]}}))
    stalls = stalls_of_run(tmp_path)
    assert stalls is not None and stalls.shape == (2, 2) and stalls[0, 0] == T0 + 0.2  # sorted by end
    hit = in_a_stall(s, stalls)
    slow = int(np.argmax(s.total_ms))
    assert hit[slow] and not hit[10] and not hit[299]  # tasks 10 and 299 ran well away from 1.15-1.18 s
    assert hit.sum() == np.sum((s.done_wall >= T0 + 1.15) & (s.start_wall <= T0 + 1.18))
    text = "\n".join(report(s, stalls))
    assert "in a stall" in text and "stalled 1 time(s)" in text
    assert stalls_of_run(tmp_path / "nowhere") is None
