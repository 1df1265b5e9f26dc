"""Routers in one process joined over a real nats-server: cross-router tasks, isolation and healing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from live_helpers import Proc, agent, run, wait_until
from nats_helpers import NatsServer

from aicp import errors
from aicp.cluster import ClusterConfig
from aicp.lab.bench.live import free_port
from aicp.live.cluster import NatsCluster
from aicp.live.controller import Controller
from aicp.live.server import AICPWebSocketServer
from aicp.messages import decode_body, decode_frame, payload
from aicp.protocol import ProtocolConfig

pytestmark = pytest.mark.live


@asynccontextmanager
async def routers(nats_url: str, names: list[str], strategy: str = "least_loaded",
                  config: ClusterConfig | None = None) -> AsyncIterator[list[tuple[AICPWebSocketServer, NatsCluster]]]:
    started: list[tuple[AICPWebSocketServer, NatsCluster]] = []
    try:
        for name in names:
            server = AICPWebSocketServer("127.0.0.1", 0, strategy=strategy, protocol_config=ProtocolConfig(router_id=name))
            await server.start()
            # peers are lost on a dropped link at once; silence (the partition test) takes peer_timeout_s, which
            # must outlast a stall of this one event loop on a busy machine (at 0.5 s, r1 dropped r2 right after a heal)
            cluster = NatsCluster(server, nats_url, config or ClusterConfig(publish_interval_s=0.05, peer_timeout_s=1.5))
            await cluster.start()
            started.append((server, cluster))
        yield started
    finally:
        for server, cluster in started:
            await cluster.stop()
            await server.stop(drain_s=0.0)


def test_a_task_submitted_at_one_router_runs_at_another_and_its_signature_checks_at_the_controller(nats_server: NatsServer) -> None:
    async def main() -> None:
        async with routers(nats_server.url, ["r1", "r2"]) as rs:
            (s1, c1), (s2, c2) = rs
            async with agent(s2.url, "agent-at-r2", {"echo": lambda x: {"echo": x}}):
                await wait_until(lambda: len(c1.node.router.registry.agents_with("echo")) > 0, what="r1 sees r2's agent")
                async with Controller(s1.url) as ctl:
                    result = await ctl.submit("echo", {"n": 7}, timeout=5.0)
                    assert result.agent_id == "agent-at-r2" and result.value == {"echo": {"n": 7}}
                    result.verify()  # the agent's own signature, over the bytes it signed
                assert c1.node.counters["tasks_forwarded_out"] == 1 and c2.node.counters["tasks_forwarded_in"] == 1
                assert c2.node.counters["outcomes_out"] == 1 and s1.proto.counters["outcomes_completed"] == 1

    run(main(), timeout=30.0)


def test_the_cluster_timer_fires_at_the_views_deadlines_only(nats_server: NatsServer) -> None:
    """One timer armed at the view's next deadline: summaries keep going out on it, a silent peer is lost by it,
    and it wakes for nothing else (each firing publishes a summary while the peers are alive)."""
    async def main() -> None:
        async with routers(nats_server.url, ["r1", "r2"], config=ClusterConfig(publish_interval_s=0.1, peer_timeout_s=0.4)) as rs:
            (_, c1), (_, c2) = rs
            await wait_until(lambda: c1.node.live_routers() == ["r2"] and c2.node.live_routers() == ["r1"], what="the routers hear each other")
            await wait_until(lambda: c1.node.counters["summaries_sent"] >= 5, what="summaries keep going out on the timer")
            view = c1.node.view
            assert c1._timer.armed and c1._timer.at == view.next_deadline() == view.next_publish
            # the summary sent by start() went out without the timer; every other one is a timer firing, and no firing was wasted
            assert 1 <= c1.timer_calls <= c1.node.counters["summaries_sent"]
            assert c1.info()["timer_calls"] == c1.timer_calls  # /healthz shows it
            await c2.stop()  # r2 falls silent: its expiry is the next deadline once r1's summaries stop moving it
            await wait_until(lambda: c1.node.live_routers() == [], what="r1 loses the silent r2 by its timer")
            assert c1.node.counters["routers_lost"] == 1
            sent = c1.node.counters["summaries_sent"]
            await wait_until(lambda: c1.node.counters["summaries_sent"] > sent, what="r1 still publishes")

    run(main(), timeout=30.0)


def test_nats_restart_degrades_to_local_routing_and_heals(nats_server: NatsServer) -> None:
    async def main() -> None:
        async with routers(nats_server.url, ["r1", "r2"]) as rs:
            (s1, c1), (s2, _) = rs
            async with agent(s1.url, "local-agent", {"here": lambda x: 1}), agent(s2.url, "remote-agent", {"there": lambda x: 2}):
                # r2's agent, not only r2: a summary from before the agent registered makes r2 live without it
                await wait_until(lambda: len(c1.node.router.registry.agents_with("there")) > 0, what="r1 sees r2's agent")
                async with Controller(s1.url) as ctl:
                    assert (await ctl.submit("there", {}, timeout=5.0)).value == 2
                    nats_server.stop()
                    await wait_until(lambda: c1.node.live_routers() == [], timeout=5.0, what="r1 isolated")
                    assert (await ctl.submit("here", {}, timeout=5.0)).value == 1  # local routing goes on
                    with pytest.raises(errors.TaskError) as exc:
                        await ctl.submit("there", {}, timeout=5.0)
                    assert exc.value.code == errors.NO_AGENT
                    nats_server.start()
                    await wait_until(lambda: c1.node.live_routers() == ["r2"], timeout=15.0, what="r1 hears r2 again")
                    assert (await ctl.submit("there", {}, timeout=5.0)).value == 2

    run(main(), timeout=60.0)


def test_a_controller_with_several_urls_moves_on_when_its_router_stops(nats_server: NatsServer) -> None:
    async def main() -> None:
        async with routers(nats_server.url, ["r1", "r2"]) as rs:
            (s1, _), (s2, _c2) = rs
            async with agent(s2.url, "a2", {"echo": lambda x: x}):
                async with Controller([s1.url, s2.url]) as ctl:
                    await wait_until(lambda: rs[0][1].node.live_routers() == ["r2"], what="r1 sees r2")
                    assert (await ctl.submit("echo", 1, timeout=5.0)).value == 1
                    assert ctl.server_url == s1.url
                    await s1.stop(drain_s=0.0)
                    await wait_until(lambda: ctl.connected and ctl.server_url == s2.url, timeout=10.0, what="controller on r2")
                    assert (await ctl.submit("echo", 2, timeout=5.0)).value == 2
                    await asyncio.sleep(0)

    run(main(), timeout=60.0)


class TcpCut:
    """A TCP relay in front of nats-server that can cut one router off (and let it back)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    def cut(self) -> None:
        self.open = False
        for w in list(self._writers):
            w.transport.abort()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


def test_a_router_partitioned_from_nats_routes_locally_and_heals(nats_server: NatsServer) -> None:
    async def main() -> None:
        cut = TcpCut(nats_server.port)
        await cut.start()
        try:
            async with routers(nats_server.url, ["r1"]) as rs1, routers(f"nats://127.0.0.1:{cut.port}", ["r2"]) as rs2:
                (s1, c1), (s2, c2) = rs1[0], rs2[0]
                async with agent(s1.url, "a1", {"here": lambda x: 1}), agent(s2.url, "a2", {"there": lambda x: 2}):
                    await wait_until(lambda: len(c1.node.router.registry.agents_with("there")) > 0 and len(c2.node.router.registry.agents_with("here")) > 0,
                                     what="both see the other's agent")
                    async with Controller(s1.url) as ctl1, Controller(s2.url) as ctl2:
                        assert (await ctl1.submit("there", {}, timeout=5.0)).value == 2
                        assert (await ctl2.submit("here", {}, timeout=5.0)).value == 1
                        cut.cut()
                        await wait_until(lambda: c1.node.live_routers() == [] and c2.node.live_routers() == [], timeout=10.0, what="both isolated")
                        assert (await ctl2.submit("there", {}, timeout=5.0)).value == 2  # r2 goes on locally
                        for ctl, method in ((ctl1, "there"), (ctl2, "here")):
                            with pytest.raises(errors.TaskError) as exc:
                                await ctl.submit(method, {}, timeout=5.0)
                            assert exc.value.code == errors.NO_AGENT
                        cut.open = True  # heal: nats-py reconnects by itself
                        await wait_until(lambda: c1.node.live_routers() == ["r2"] and c2.node.live_routers() == ["r1"], timeout=15.0, what="healed")
                        assert (await ctl1.submit("there", {}, timeout=5.0)).value == 2
                        assert (await ctl2.submit("here", {}, timeout=5.0)).value == 1
                        assert c2.disconnects >= 1
        finally:
            await cut.stop()

    run(main(), timeout=60.0)


def test_aicp_submit_with_several_urls_skips_a_dead_router(nats_server: NatsServer, procs: Callable[..., Proc]) -> None:
    async def main() -> None:
        async with routers(nats_server.url, ["r1"]) as rs:
            (s1, _), = rs
            async with agent(s1.url, "a1", {"echo": lambda x: x}):
                dead = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
                p = procs("-m", "aicp", "submit", "echo", '{"n": 3}', "--url", f"{dead},{s1.url}")
                while p.popen.poll() is None:
                    await asyncio.sleep(0.05)
                assert p.popen.returncode == 0, p.output()
                assert '{"n": 3}' in p.output() or '{"n":3}' in p.output()

    run(main(), timeout=30.0)


def test_an_outcome_from_nats_that_schedules_a_retry_rearms_the_owners_timer() -> None:
    """A failed remote attempt makes no output at the owner, only a retry after a backoff: the server's one
    timer must be re-armed for it then, not left at the attempt's deadline (the retry would wait for the ticker)."""
    from aicp.lab.bench.hop_core import DriverHop, _as_msg  # the live servers and NATS links, NATS in memory

    async def go() -> None:
        hop = DriverHop()
        now = time.time()
        sb = hop.sb
        _, task = hop.ctl_b.task_frame("bench.synthetic", payload({}), now)
        sb._apply(sb.proto.frame_received(3, task, now))
        hop.soon.run()
        attempt_deadline = sb._timer.at
        assert attempt_deadline is not None
        hop.wires[0].data_received(_as_msg(hop.sockets[1].written, hop.to_a, 2))
        hop.soon.run()
        assert hop.links[1].sent.pop() == task  # at ra's agent
        failed = hop.agent.result_frame(decode_body(decode_frame(task).body), payload({}), now, ok=False, reason="no")  # type: ignore[arg-type]
        hop.sa._apply(hop.sa.proto.frame_received(1, failed, now))
        hop.soon.run()
        hop.wires[1].data_received(_as_msg(hop.sockets[0].written, hop.to_b, 2))
        hop.soon.run()
        assert not hop.links[3].sent  # no outcome yet: the owner retries
        assert sb.proto.router.stats.retries == 1 and sb.proto.pending_tasks() == 1
        retry_at = sb.proto.next_deadline()
        assert retry_at is not None and retry_at < attempt_deadline
        assert sb._timer.at == retry_at

    asyncio.run(go())
