"""Trace of a router run: what arrived, where it went, how it ended, and who came and went.

A trace is what ``aicp serve --record FILE`` and ``aicp bench --record FILE`` write,
and what the simulator replays (docs/TRACE.md has the format). It is JSON lines:
a ``header`` line, then one event per line in the order the router saw them. Each
event carries ``t``, the router's clock (seconds since the epoch), as the core
received it with the event. The core only builds events and hands them to a sink
(a callable the driver sets); files are the drivers' job: ``aicp.live.record`` writes
them, and readers pass the file's bytes to :func:`parse`.

Reading tolerates a torn last line, so a router that crashed mid-write leaves a
readable prefix. Unknown event types are refused: a trace names its ``v``ersion,
and a reader of version 1 does not guess at another.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

TRACE_VERSION: Final = 1


class TraceEvent(msgspec.Struct, tag_field="e", forbid_unknown_fields=True, omit_defaults=True):
    t: float


class Header(TraceEvent, tag="header"):
    """First line: which router, with what strategy and limits, and the trace format version."""

    v: int
    router: str
    strategy: str
    config: dict[str, Any] = {}


class Arrive(TraceEvent, tag="arrive"):
    """A task was admitted (refusals before admission are not arrivals)."""

    task: str  # requester/task id: unique in the router
    method: str
    bytes: int  # size of the task's payload as sent
    timeout_ms: float | None = None


class Dispatch(TraceEvent, tag="dispatch"):
    """The task was sent to ``agent`` (``attempt`` counts from 1)."""

    task: str
    agent: str
    attempt: int


class Reply(TraceEvent, tag="result"):
    """An agent's result arrived. ``service_ms`` is the handler time the agent signed into it."""

    task: str
    agent: str
    ok: bool
    service_ms: float | None = None


class End(TraceEvent, tag="end"):
    """The task's one outcome: ``completed`` or the error code."""

    task: str
    outcome: str
    attempts: int
    agent: str | None = None


class AgentUp(TraceEvent, tag="agent-up"):
    agent: str
    capabilities: list[str]
    concurrency: int


class AgentDown(TraceEvent, tag="agent-down"):
    """The agent is gone: ``reason`` says why (connection lost, lease expired, deregistered, replaced)."""

    agent: str
    reason: str


class HoldOut(TraceEvent, tag="hold-out"):
    """The router stopped choosing ``agent`` until ``until`` after repeated failures."""

    agent: str
    until: float


AnyEvent = Header | Arrive | Dispatch | Reply | End | AgentUp | AgentDown | HoldOut

#: Where the core hands events; ``None`` means not recording (the default, and free).
Sink = Callable[[TraceEvent], None]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: TraceEvent) -> bytes:
    """One event as one line (newline included)."""
    return _encoder.encode(event) + b"\n"


class TraceError(ValueError):
    """The file is not an AICP trace this reader understands."""


def _lines(data: bytes) -> Iterator[bytes]:
    """The complete lines of a trace's bytes; a torn last line and a torn gzip tail are dropped."""
    if data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        try:
            data = d.decompress(data)
        except zlib.error:  # corrupt in the middle: nothing after it can be trusted
            data = b""
    *complete, _torn = data.split(b"\n")
    yield from (line for line in complete if line.strip())


def parse(data: bytes, name: str = "trace") -> Iterator[AnyEvent]:
    """Every event in a trace's bytes (plain or gzip), header first. The caller reads the file."""
    first = True
    for n, line in enumerate(_lines(data), 1):
        try:
            event = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise TraceError(f"{name}:{n}: {exc}") from None
        if first:
            if not isinstance(event, Header):
                raise TraceError(f"{name}: the first line is not a trace header")
            if event.v != TRACE_VERSION:
                raise TraceError(f"{name}: trace version {event.v}; this reader knows version {TRACE_VERSION}")
            first = False
        yield event
    if first:
        raise TraceError(f"{name}: empty trace (no header)")
