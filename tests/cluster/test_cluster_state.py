"""``aicp serve --cluster nats://… --state nats://…``: routers of one cluster sharing their lasting state in JetStream KV.

What the design guarantees (docs/CLUSTER.md, aicp/live/store_jetstream.py), with router
processes on one real ``nats-server -js`` (a free port of 127.0.0.1, killed by PID):

* a task submitted at router B runs on an agent at router A (the cluster works with the store on);
* bindings are cluster-wide, the first one stored wins: the agent's id with another key
  is refused at B, where the agent never connected;
* the owner (B) stores the task's outcome: B SIGKILLed, a router C joining afterwards
  answers the controller's resubmission of the same task id with that outcome, verbatim,
  and the task does not run again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from live_helpers import Proc, agent, http_json, refused_as_taken, router_url, run
from nats_helpers import JetStreamServer
from test_state_live import FrameKeepingController

from aicp.lab.bench.live import free_port
from aicp.live.store_jetstream import kv_token
from aicp.protocol import task_key
from aicp.signing import Identity

pytestmark = [pytest.mark.live]


def _router(procs: Callable[..., Proc], name: str, js: JetStreamServer, tmp_path: Path) -> Proc:
    return procs("-m", "aicp", "serve", "--port", str(free_port()), "--cluster", js.url, "--router-id", name, "--state", js.url,
                 "--key", str(tmp_path / f"{name}.key"), "--log-level", "WARNING", "--drain-timeout", "0.2")


async def _outcome_stored(url: str, key: str, timeout: float = 10.0) -> None:
    import nats
    from nats.js.errors import KeyNotFoundError

    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("aicp_outcomes")
        deadline = time.monotonic() + timeout
        while True:
            try:
                await kv.get(key)
                return
            except KeyNotFoundError:
                assert time.monotonic() < deadline, "the owner never stored the outcome"
                await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_cluster_routers_share_bindings_and_a_new_router_answers_a_resubmission_from_the_store(
        procs: Callable[..., Proc], jetstream: JetStreamServer, tmp_path: Path) -> None:
    worker_key, ctl_key = Identity.generate(), Identity.generate()
    runs: list[int] = []

    def work(x: int) -> dict[str, int]:
        runs.append(x)
        return {"echo": x}

    async def main() -> None:
        ra, rb = _router(procs, "ra", jetstream, tmp_path), _router(procs, "rb", jetstream, tmp_path)
        url_a, url_b = await asyncio.gather(asyncio.to_thread(router_url, ra, 20.0), asyncio.to_thread(router_url, rb, 20.0))
        health_b = url_b.replace("ws://", "http://") + "/healthz"
        async with agent(url_a, "worker", {"work": work}, identity=worker_key):
            await _until(lambda: http_json(health_b)["cluster"]["routers"] == ["ra"], "rb never heard ra")
            # ra's first summary may predate the worker: wait for the one that offers "work" (a remote candidate at B)
            agents_b = url_b.replace("ws://", "http://") + "/agents"
            await _until(lambda: any(a["agent_id"] == "~ra~work" and a["status"] == "active" for a in http_json(agents_b)["agents"]),
                         "rb never saw ra's capacity for work")
            # 1. submitted at B, run at A
            ctl = FrameKeepingController(url_b, "ctl", identity=ctl_key)
            async with ctl:
                assert (await ctl.submit("work", 7, timeout=10, task_id="t-kept")) == {"echo": 7}
            stored = ctl.frames["t-kept"]
            assert len(stored) == 1 and runs == [7]
            assert http_json(health_b)["cluster"]["tasks_forwarded_out"] == 1
            # 2. the worker's id with another key at B, where it never connected: refused once B has seen A's binding
            await refused_as_taken(url_b, "worker", ["work"], "the binding made at ra")
            # 3. the owner B dies; C joins; the same task id resubmitted at C gets B's stored outcome, verbatim
            await _outcome_stored(jetstream.url, kv_token(task_key("ctl", "t-kept")))
            rb.kill(signal.SIGKILL)
            assert await asyncio.to_thread(rb.popen.wait, 10) == -signal.SIGKILL
            rc = _router(procs, "rc", jetstream, tmp_path)
            url_c = await asyncio.to_thread(router_url, rc, 20.0)
            await _until(lambda: http_json(url_c.replace("ws://", "http://") + "/healthz")["cluster"]["routers"] == ["ra"], "rc never heard ra")
            ctl = FrameKeepingController(url_c, "ctl", identity=ctl_key)
            async with ctl:
                assert (await ctl.submit("work", 7, timeout=10, task_id="t-kept")) == {"echo": 7}
            assert ctl.frames["t-kept"] == stored
            assert runs == [7]  # not run again
            assert http_json(url_c.replace("ws://", "http://") + "/healthz")["cluster"]["tasks_forwarded_out"] == 0

    run(main(), timeout=60)
