"""The router's trace: every admitted task, dispatch, result, outcome and agent event, in order, and a reader
that survives a torn tail."""

from __future__ import annotations

import gzip
import random
import zlib
from typing import Any

import msgspec
import pytest

from aicp import trace
from aicp.inprocess import InProcessHub
from aicp.messages import Task
from aicp.peer import PeerSession
from aicp.protocol import RouterProtocol
from aicp.router import Router, RouterConfig
from aicp.signing import Identity


def recorded_hub(**cfg: Any) -> tuple[InProcessHub, list[trace.TraceEvent]]:
    events: list[trace.TraceEvent] = []
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(**cfg), "round_robin", random.Random(1)))
    hub = InProcessHub(proto)
    proto.record(events.append, hub.now)
    return hub, events


def kinds(events: list[trace.TraceEvent]) -> list[str]:
    return [type(e).__struct_config__.tag for e in events]  # type: ignore[misc]


def test_a_task_leaves_arrival_dispatch_result_and_one_end() -> None:
    hub, events = recorded_hub()
    hub.connect(PeerSession(Identity.generate(), "a1", "agent", ["m"], concurrency=3), handler=lambda task: {"ok": 1})
    ctl = hub.connect(PeerSession(Identity.generate(), "c1", "controller"))
    tid = ctl.submit("m", {"x": "yz"})
    hub.run_until_idle()
    assert kinds(events) == ["header", "agent-up", "arrive", "dispatch", "result", "end"]
    header, up, arrive, dispatch, reply, end = events
    assert isinstance(header, trace.Header) and header.v == trace.TRACE_VERSION and header.strategy == "round_robin"
    assert isinstance(up, trace.AgentUp) and (up.agent, up.capabilities, up.concurrency) == ("a1", ["m"], 3)
    assert isinstance(arrive, trace.Arrive) and arrive.method == "m" and arrive.bytes == len(b'{"x":"yz"}') and arrive.task.endswith(tid)
    assert isinstance(dispatch, trace.Dispatch) and (dispatch.task, dispatch.agent, dispatch.attempt) == (arrive.task, "a1", 1)
    assert isinstance(reply, trace.Reply) and reply.ok and reply.agent == "a1"
    assert isinstance(end, trace.End) and (end.task, end.outcome, end.attempts, end.agent) == (arrive.task, "completed", 1, "a1")
    assert [e.t for e in events] == sorted(e.t for e in events)


def test_failover_lost_agent_and_hold_out_are_recorded() -> None:
    hub, events = recorded_hub(backoff_base_s=0.01, suspect_after_failures=1)

    def boom(task: Task) -> None:
        raise ValueError("broken")

    for name in ("bad", "good1", "good2"):
        hub.connect(PeerSession(Identity.generate(), name, "agent", ["m"]), handler=boom if name == "bad" else (lambda task: 1))
    ctl = hub.connect(PeerSession(Identity.generate(), "c1", "controller"))
    ctl.submit("m", 1)
    hub.advance(1.0)
    dispatches = [e for e in events if isinstance(e, trace.Dispatch)]
    assert [d.attempt for d in dispatches] == [1, 2] and dispatches[0].agent == "bad"
    assert [e.ok for e in events if isinstance(e, trace.Reply)] == [False, True]
    ends = [e for e in events if isinstance(e, trace.End)]
    assert len(ends) == 1 and ends[0].outcome == "completed" and ends[0].attempts == 2
    assert any(isinstance(e, trace.HoldOut) and e.agent == "bad" and e.until > e.t for e in events)
    ep = next(ep for ep in hub.endpoints.values() if ep.session.peer_id == "good2")
    hub.disconnect(ep)
    assert isinstance(events[-1], trace.AgentDown) and events[-1].agent == "good2"


def test_recording_started_on_a_running_router_lists_the_agents_already_there() -> None:
    proto = RouterProtocol(Identity.generate(), Router(RouterConfig(), "round_robin", random.Random(1)))
    hub = InProcessHub(proto)
    hub.connect(PeerSession(Identity.generate(), "early", "agent", ["m"]), handler=lambda task: 1)
    events: list[trace.TraceEvent] = []
    proto.record(events.append, hub.now)
    assert kinds(events) == ["header", "agent-up"] and events[1].agent == "early"  # type: ignore[attr-defined]
    proto.record(None, hub.now)
    hub.connect(PeerSession(Identity.generate(), "late", "agent", ["m"]), handler=lambda task: 1)
    assert len(events) == 2  # stopped: nothing more


def _sample() -> bytes:
    events = [trace.Header(t=1.0, v=1, router="r", strategy="s"), trace.Arrive(t=2.0, task="c/1", method="m", bytes=3),
              trace.End(t=3.0, task="c/1", outcome="timeout", attempts=2)]
    return b"".join(trace.encode(e) for e in events)


def test_parse_reads_plain_and_gzip_and_drops_a_torn_tail() -> None:
    data = _sample()
    assert [type(e) for e in trace.parse(data)] == [trace.Header, trace.Arrive, trace.End]
    torn = data[:-7]  # the router died in the middle of the last line
    assert [type(e) for e in trace.parse(torn)] == [trace.Header, trace.Arrive]
    gz = gzip.compress(data)
    assert list(trace.parse(gz)) == list(trace.parse(data))
    # a gzip stream cut mid-member (no trailer), as a killed writer leaves it after a sync flush
    c = zlib.compressobj(wbits=31)
    cut = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert len(list(trace.parse(cut))) == 3


def test_parse_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(trace.TraceError, match="header"):
        list(trace.parse(trace.encode(trace.End(t=1.0, task="x", outcome="completed", attempts=1))))
    with pytest.raises(trace.TraceError, match="version 2"):
        list(trace.parse(trace.encode(trace.Header(t=1.0, v=2, router="r", strategy="s"))))
    with pytest.raises(trace.TraceError, match=":2:"):
        list(trace.parse(_sample().replace(b'"arrive"', b'"arrival"')))
    with pytest.raises(trace.TraceError, match="empty"):
        list(trace.parse(b""))
    assert msgspec.json.decode(trace.encode(trace.Reply(t=1.0, task="c/1", agent="a", ok=True)))  # service_ms omitted when unknown
