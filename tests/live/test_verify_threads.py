"""Signature checks on worker threads (``ServerLimits.verify_threads``): same verdicts, each connection's order kept."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from live_helpers import agent, run, serving
from websockets.asyncio.client import connect

import aicp.protocol
import aicp.signing
from aicp import errors
from aicp.live.controller import AICPController
from aicp.live.server import ServerLimits
from aicp.messages import Error, RegisterAck, payload
from aicp.peer import PeerSession
from aicp.signing import Identity

pytestmark = pytest.mark.live


def test_tasks_reach_one_agent_in_the_order_the_controller_sent_them_and_each_ends_once(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[str] = set()
    real_verify = aicp.signing.verify

    def spy(public_key: bytes, body: bytes, signature: bytes) -> None:
        threads.add(threading.current_thread().name)
        real_verify(public_key, body, signature)

    monkeypatch.setattr(aicp.protocol, "verify", spy)
    order: list[int] = []

    def record(obj: Any) -> Any:
        order.append(obj["n"])
        return obj

    async def main() -> None:
        async with (
            serving(limits=ServerLimits(verify_threads=2)) as server,
            agent(server.url, "only", {"m": record}, concurrency=1, max_queued=1000) as _,
            AICPController(server.url, "ctl") as ctl,
        ):
            results = await asyncio.gather(*(ctl.submit("m", {"n": i}, timeout=20, task_id=f"t{i}") for i in range(300)))
            assert [r["n"] for r in results] == list(range(300))
            assert order == list(range(300))  # one connection's frames reach the core in the order they were sent
            assert server.proto.counters["outcomes_completed"] == 300 and server.proto.counters["outcomes_failed"] == 0
        assert any(name.startswith("aicp-verify") for name in threads)  # the checks did run on the worker threads

    run(main(), timeout=60)


def test_a_forged_task_between_good_ones_is_refused_and_the_next_one_runs() -> None:
    async def main() -> None:
        async with serving(limits=ServerLimits(verify_threads=2)) as server, agent(server.url, "a1", {"m": lambda obj: obj}) as _:
            session = PeerSession(Identity.generate(), "raw-ctl", "controller")
            async with connect(server.url, compression=None) as ws:
                session.connection_made()
                session.receive(await ws.recv(decode=False), 0.0)


                await ws.send(session.register_frame(time.time()), text=True)
                assert isinstance(session.receive(await ws.recv(decode=False), time.time()).body, RegisterAck)
                _, good1 = session.task_frame("m", payload({"k": "one"}), time.time(), "g1")
                _, forged = session.task_frame("m", payload({"k": "two"}), time.time(), "f1")
                _, good2 = session.task_frame("m", payload({"k": "six"}), time.time(), "g2")
                forged = forged.replace(b'"two"', b'"owt"')
                for frame in (good1, forged, good2):
                    await ws.send(frame, text=True)
                seen: dict[str, Any] = {}
                while len(seen) < 3:
                    body = session.receive(await ws.recv(decode=False), time.time()).body
                    seen[body.task_id if not isinstance(body, Error) or body.task_id else body.ref] = body  # type: ignore[union-attr]
                assert isinstance(seen["f1"], Error) and seen["f1"].code == errors.INVALID_SIGNATURE
                assert not isinstance(seen["g1"], Error) and not isinstance(seen["g2"], Error)
            assert server.proto.rejections == {errors.INVALID_SIGNATURE: 1}

    run(main(), timeout=30)
