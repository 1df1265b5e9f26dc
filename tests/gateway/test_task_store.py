"""A finished task kept in the store holds two objects the garbage collector tracks, and ``done`` still works.

Every full collection walks what the store keeps (up to ``max_kept`` tasks); at six
tracked objects per task it paused the gateway for tens of ms (docs/GATEWAY.md).
"""

from __future__ import annotations

import asyncio
import gc

from msgspec import Raw

from aicp.gateway.tasks import GatewayTask, Outcome, TaskStore


def finished(store: TaskStore, i: int) -> GatewayTask:
    task = GatewayTask(f"t-{i}", "echo", Raw(b'{"text":"x"}'), 1000.0, "anonymous", None, progress=False)
    store.add(task)
    task.record("submitted")
    outcome = Outcome(True, agent_id="agent-1", agent_key="ed25519:k", signature="s", body=b'{"type":"result"}', payload=Raw(b"1"))
    assert store.finish(task, outcome, "completed")
    return task


def test_a_kept_task_holds_two_tracked_objects() -> None:
    store = TaskStore()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(500):
        finished(store, i)
    gc.collect()
    per_task = (len(gc.get_objects()) - before) / 500
    assert per_task <= 2.01, per_task
    task = store.finished["t-7"]
    assert [gc.is_tracked(x) for x in (task.done, task.watchers, task.unverified, task.outcome)] == [True, False, False, False]


def test_done_wakes_a_waiter_once_and_stays_set() -> None:
    async def run() -> None:
        store = TaskStore()
        task = GatewayTask("t-1", "echo", Raw(b"null"), 1000.0, "anonymous", None)
        store.add(task)
        assert not task.done.is_set()
        waiter = asyncio.get_running_loop().create_task(task.done.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        store.finish(task, Outcome(False, "timeout", "late"), "failed")
        assert await asyncio.wait_for(waiter, 1.0) is True
        assert task.done.is_set() and await asyncio.wait_for(task.done.wait(), 1.0)
        queue = task.watch()  # a stream opened after the end: replay only, nothing new comes
        assert queue.empty() and task.watchers == [queue]
        task.unwatch(queue)
        assert task.watchers == ()

    asyncio.run(run())
