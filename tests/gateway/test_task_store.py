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


def test_deadlines_expire_only_tasks_still_running_under_their_own_entry_on_one_timer() -> None:
    """``Deadlines``: a task that ended before its deadline is dropped, not expired; a new task reusing an id (an
    Idempotency-Key) is not expired by the old task's entry; the running ones expire; the heap ends empty."""
    from aicp.gateway.link import Deadlines

    store = TaskStore()
    expired: list[GatewayTask] = []

    def expire(task: GatewayTask) -> None:
        expired.append(task)
        store.finish(task, Outcome(False, "timeout", "late"), "failed")

    def new(task_id: str) -> GatewayTask:
        task = GatewayTask(task_id, "echo", Raw(b"1"), 1000.0, "anonymous", None, progress=False)
        store.add(task)
        return task

    async def run() -> None:
        deadlines = Deadlines(store, expire)
        early, reused, late = new("a"), new("b"), new("c")
        for task, delay in ((early, 0.01), (reused, 0.01), (late, 0.03)):
            deadlines.add(task, delay)
        store.finish(early, Outcome(True, payload=Raw(b"1"), body=b"{}"), "completed")
        store.finish(reused, Outcome(True, payload=Raw(b"1"), body=b"{}"), "completed")
        again = new("b")
        deadlines.add(again, 0.05)
        timers = 0
        for _ in range(200):
            await asyncio.sleep(0.005)
            timers = max(timers, int(deadlines._timer is not None))
            if not deadlines.heap:
                break
        assert expired == [late, again]
        assert early.state == reused.state == "completed" and late.state == again.state == "failed"
        assert not deadlines.heap and deadlines._timer is None and timers == 1

    asyncio.run(run())


def test_view_json_is_the_encoded_view_for_every_outcome() -> None:
    """A completed task's answer is encoded through ``ResultView``: byte for byte what encoding ``view()`` gives."""
    import msgspec

    store = TaskStore()
    done = finished(store, 1)
    body = bytes(range(256)) * 3  # every byte value, and a length whose base64 needs padding
    payloads: list[Raw | None] = [Raw(b'{"a":[1,2.5,"\\u00e9"]}'), None]
    for payload in payloads:
        done.outcome = Outcome(True, agent_id="agent-\u00e9", agent_key="ed25519:k", signature="c2ln", body=body, payload=payload)
        assert done.view_json() == msgspec.json.encode(done.view())
    failed = GatewayTask("t-2", "echo", Raw(b"null"), 1000.0, "anonymous", None)
    store.add(failed)
    running = failed.view_json()
    assert running == msgspec.json.encode(failed.view()) and b"result" not in running
    store.finish(failed, Outcome(False, "timeout", "no outcome"), "failed")
    assert failed.view_json() == msgspec.json.encode(failed.view())
