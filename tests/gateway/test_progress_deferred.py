"""Progress notices for unwatched tasks are kept unverified and verified when the events are read.

The link is fed signed frames directly (no socket: ``_frame`` is what its reader
calls for each frame), with a router identity of the test's own.
"""

from __future__ import annotations

from msgspec import Raw

from aicp.gateway.link import GatewayLink
from aicp.gateway.tasks import GatewayTask, TaskStore
from aicp.messages import PROTOCOL_VERSION, Progress, seal
from aicp.signing import Identity

ROUTER = Identity.generate()


def link_with_task() -> tuple[GatewayLink, GatewayTask]:
    store = TaskStore()
    link = GatewayLink("ws://127.0.0.1:9", Identity.generate(), store, progress=True)
    link.session.router_id = "router"
    link.session.router_key = ROUTER.public_key_text
    task = GatewayTask("t-1", "echo", Raw(b"null"), 1000.0, "anonymous", None)
    task.record("submitted")
    store.add(task)
    return link, task


def notice(agent: str = "agent-7", signer: Identity = ROUTER, state: str = "dispatched", attempt: int = 1) -> bytes:
    body = Progress(v=PROTOCOL_VERSION, id=f"p-{agent}-{attempt}", sender="router", ts=0.0, task_id="t-1", method="echo", state=state, agent=agent, attempt=attempt)  # type: ignore[arg-type]
    return seal(signer, "router", body)


def names(task: GatewayTask) -> list[str]:
    return [e.event for e in task.events]


def test_an_unwatched_notice_waits_unverified_then_joins_the_events_where_it_arrived() -> None:
    link, task = link_with_task()
    link._frame(notice())
    assert names(task) == ["accepted", "submitted"] and len(task.unverified) == 1
    link._frame(notice("agent-8", state="retried", attempt=2))
    task.record("completed", agent_id="agent-8")
    link.settle(task)
    assert names(task) == ["accepted", "submitted", "dispatched", "retried", "completed"]
    assert [e.agent_id for e in task.events[2:4]] == ["agent-7", "agent-8"] and not task.unverified
    assert link.rejected_frames == 0
    link.settle(task)  # nothing left: no change
    assert len(task.events) == 5


def test_a_tampered_kept_notice_is_dropped_and_counted_when_settled() -> None:
    link, task = link_with_task()
    link._frame(notice().replace(b'"agent":"agent-7"', b'"agent":"agent-6"'))
    assert len(task.unverified) == 1
    link.settle(task)
    assert names(task) == ["accepted", "submitted"] and link.rejected_frames == 1


def test_a_watched_task_gets_its_notice_verified_at_once() -> None:
    link, task = link_with_task()
    queue = task.watch()
    link._frame(notice())
    assert names(task)[-1] == "dispatched" and queue.get_nowait().agent_id == "agent-7" and not task.unverified
    link._frame(notice().replace(b'"agent":"agent-7"', b'"agent":"agent-6"'))
    assert link.rejected_frames == 1 and len(task.events) == 3


def test_a_notice_signed_by_another_key_is_not_kept() -> None:
    link, task = link_with_task()
    link._frame(notice(signer=Identity.generate()))
    assert not task.unverified and names(task) == ["accepted", "submitted"] and link.rejected_frames == 1
