"""Reconnects, idempotent resubmission, re-sent results, many agents, TLS, in-process handlers."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme
from live_helpers import agent, run, serving, wait_until

from aicp import errors
from aicp.live.client import AICPWebSocketClient
from aicp.live.controller import AICPController
from aicp.live.handlers import echo, text_classify
from aicp.live.server import AICPWebSocketServer
from aicp.protocol import ProtocolConfig
from aicp.registry import Status
from aicp.router import RouterConfig
from aicp.signing import Identity

pytestmark = pytest.mark.live


def test_clients_reconnect_after_the_router_restarts() -> None:
    async def main() -> None:
        first = AICPWebSocketServer("127.0.0.1", 0)
        await first.start()
        port = first.port
        async with (
            agent(first.url, "survivor", {"echo": lambda p: {"from": "agent", "p": p}}) as survivor,
            AICPController(first.url, "ctl", backoff_cap_s=0.2) as ctl,
        ):
            assert (await ctl.submit("echo", 1, timeout=5))["p"] == 1
            await first.stop(drain_s=0.0)
            await wait_until(lambda: not survivor.connected and not ctl.connected, what="both clients to notice")
            # A task submitted while the router is down waits, and is sent after re-registering.
            pending = asyncio.ensure_future(ctl.submit("local.echo", "queued", timeout=10))
            await asyncio.sleep(0.3)
            second = AICPWebSocketServer("127.0.0.1", port)  # a new process would have a new key: so does this
            second.register_handler("local.echo", echo)
            await second.start()
            try:
                await wait_until(lambda: survivor.registrations == 2 and ctl.registrations == 2, timeout=8, what="re-registration")
                assert survivor.session.router_key == second.router_key != first.router_key
                assert await pending == "queued"
                assert (await ctl.submit("echo", 2, timeout=5))["p"] == 2
                state = second.router.registry.get("survivor")
                assert state is not None and state.status is Status.ACTIVE
            finally:
                await second.stop(drain_s=0.0)

    run(main(), timeout=30)


def test_a_resubmitted_task_id_gets_the_one_outcome() -> None:
    calls: list[Any] = []

    async def slow_once(payload: Any) -> Any:
        calls.append(payload)
        await asyncio.sleep(0.2)
        return {"n": len(calls)}

    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"job": slow_once}), AICPController(server.url, "ctl") as ctl:
            # twice while running, then once more after it finished
            first, second = await asyncio.gather(ctl.submit("job", "x", timeout=5, task_id="t-1"), ctl.submit("job", "x", timeout=5, task_id="t-1"))
            third = await ctl.submit("job", "x", timeout=5, task_id="t-1")
            assert first == second == third == {"n": 1}
            assert calls == ["x"]
            assert server.proto.counters["tasks_resubmitted"] >= 1

    run(main())


def test_handler_exception_becomes_a_signed_error_and_the_agent_lives_on() -> None:
    def boom(payload: Any) -> Any:
        if payload == "bad":
            raise ValueError("cannot handle 'bad'")
        return payload

    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"job": boom}) as a, AICPController(server.url, "ctl") as ctl:
            with pytest.raises(errors.TaskError) as info:
                await ctl.submit("job", "bad", timeout=5)
            assert info.value.code == errors.AGENT_FAILED and "cannot handle 'bad'" in info.value.message
            assert await ctl.submit("job", "good", timeout=5) == "good"
            assert a.connected and a.registrations == 1

    run(main())


def test_a_result_finished_during_a_disconnect_is_resent_after_reconnecting() -> None:
    release = asyncio.Event()

    async def held(payload: Any) -> Any:
        await release.wait()
        return payload

    async def main() -> None:
        async with serving() as server, agent(server.url, "a", {"job": held}) as a, AICPController(server.url, "ctl") as ctl:
            gate = asyncio.Event()  # hold the reconnect until the result is ready, so it is sent while away
            reconnect = a.connect_with_retry

            async def gated_reconnect() -> None:
                await gate.wait()
                await reconnect()

            a.connect_with_retry = gated_reconnect  # type: ignore[method-assign]
            job = asyncio.ensure_future(ctl.submit("job", "x", timeout=5))
            await wait_until(lambda: a.running == 1, what="the task to start")
            assert server.unregister_agent("a")  # the router drops the connection mid-task
            # The task had no other agent: it fails when its agent is lost.
            with pytest.raises(errors.TaskError) as info:
                await job
            assert info.value.code == errors.AGENT_FAILED
            await wait_until(lambda: not a.connected, what="the agent to notice")
            release.set()
            await wait_until(lambda: a.completed == 1, what="the handler to finish")
            assert a.unsent_results == 1
            gate.set()
            await wait_until(lambda: a.registrations == 2 and a.unsent_results == 0, what="reconnect and re-send")
            # The router takes the re-sent result as late, and forwards nothing.
            await wait_until(lambda: server.proto.counters["results_late"] == 1, what="the late result to be counted")
            assert server.proto.counters["results_forwarded"] == 0

    run(main())


def test_a_hundred_agents_at_once() -> None:
    async def main() -> None:
        async with serving() as server:
            clients = [AICPWebSocketClient(server.url, f"a{i:03d}", Identity.generate(), concurrency=4) for i in range(100)]
            for i, c in enumerate(clients):
                c.register_handler("whoami", lambda p, i=i: i)
            await asyncio.gather(*(c.connect() for c in clients))
            listeners = [asyncio.ensure_future(c.listen()) for c in clients]
            try:
                assert server.router.registry.count_by_status()["active"] == 100
                assert server.open_connections == 100
                async with AICPController(server.url, "ctl") as ctl:
                    answers = await asyncio.gather(*(ctl.submit("whoami", None, timeout=10) for _ in range(300)))
                assert sorted(answers) == sorted(list(range(100)) * 3)  # round robin: three each
            finally:
                await asyncio.gather(*(c.close() for c in clients))
                for t in listeners:
                    t.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)
            await wait_until(lambda: server.open_connections == 0, what="all sockets to close")
            assert server.router.registry.count_by_status()["dead"] == 100

    run(main(), timeout=40)


def test_wss_with_a_private_ca() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        async with serving(ssl=server_ctx) as server:
            assert server.url.startswith("wss://")
            async with agent(server.url, "tls-agent", {"text.classify": text_classify}, ssl=client_ctx), AICPController(server.url, "ctl", ssl=client_ctx) as ctl:
                assert (await ctl.submit("text.classify", {"text": "wonderful"}, timeout=5))["label"] == "positive"
            plain = AICPController(server.url, "ctl2", reconnect=False)  # no trust in the private CA
            with pytest.raises(ssl.SSLCertVerificationError):
                await plain.connect()

    run(main())


def test_in_process_handlers_and_route_message() -> None:
    async def main() -> None:
        async with serving() as server:
            server.register_handler("double", lambda p: 2 * p)
            server.register_agent("classifier", {"text.classify": text_classify})
            async with AICPController(server.url, "ctl") as ctl:
                await wait_until(lambda: server.router.registry.count_by_status()["active"] == 2, what="local agents")
                assert await ctl.submit("double", 21, timeout=5) == 42
                assert (await server.route_message("text.classify", {"text": "terrible and broken"}))["label"] == "negative"
                assert server.unregister_agent("local.double")
                await wait_until(lambda: server.router.registry.get("local.double").status is Status.DEAD, what="unregister")  # type: ignore[union-attr]
                with pytest.raises(errors.TaskError) as info:
                    await server.route_message("double", 1, timeout=2)
                assert info.value.code == errors.NO_AGENT

    run(main())


def test_per_connection_rate_limit() -> None:
    async def main() -> None:
        async with serving(protocol_config=ProtocolConfig(rate_per_s=5.0, rate_burst=5.0)) as server, AICPController(server.url, "ctl") as ctl:
            for _ in range(10):
                await ctl.send_heartbeat()
            await wait_until(lambda: sum(e.code == errors.RATE_LIMITED for e in ctl.errors) >= 4, what="rate-limited refusals")
            assert server.proto.rejections[errors.RATE_LIMITED] >= 4
            assert ctl.connected  # refused frames do not cost the connection

    run(main())


def test_a_hung_agent_times_out_and_the_task_fails_over_on_the_router_timer() -> None:
    async def hang(payload: Any) -> Any:
        await asyncio.sleep(30)

    async def main() -> None:
        async with (
            serving(router_config=RouterConfig(attempt_timeout_s=0.3)) as server,
            agent(server.url, "hung", {"job": hang}),
            agent(server.url, "ok", {"job": lambda p: "ok"}),
            AICPController(server.url, "ctl") as ctl,
        ):
            t0 = asyncio.get_running_loop().time()
            assert await ctl.submit("job", 1, timeout=5) == "ok"  # round robin tries "hung" first
            assert 0.3 <= asyncio.get_running_loop().time() - t0 < 2.0
            hung = server.router.registry.get("hung")
            assert hung is not None and hung.timed_out == 1 and server.router.stats.retries == 1

    run(main())
