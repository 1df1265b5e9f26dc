"""Issue 6, faults on real processes: SIGSTOP past the lease, flapping, every agent dying, router restart, overload.

(The SIGKILL-mid-task scenario is tests/live/test_processes.py::test_failover_when_an_agent_process_is_killed_mid_task.)
Agents and routers run as their own processes, so SIGKILL and SIGSTOP are real. Each
test is bounded in time and says what "nothing lost" means for it, and checks it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest
from live_helpers import CountingController, Proc, http_get, http_json, metric_samples, router_url, run, serving, wait_until

from aicp import errors
from aicp.lab.bench.live import free_port
from aicp.registry import Status
from aicp.router import RouterConfig

pytestmark = [pytest.mark.live, pytest.mark.slow]


def _start_agent(procs: Callable[..., Proc], url: str, agent_id: str, service_ms: int, *extra: str) -> Proc:
    p = procs("-m", "aicp", "agent", "--url", url, "--capability", "work", "--handler", "synthetic", "--service-time", str(service_ms),
              "--id", agent_id, "--log-level", "WARNING", *extra)
    p.wait_for_line(f"Agent {agent_id} registered", timeout=15)
    return p


async def _outcome(job: asyncio.Future[object]) -> str:
    """'completed' or the error code of a submitted task."""
    try:
        await job
    except errors.TaskError as exc:
        return exc.code
    return "completed"


def test_an_agent_frozen_past_its_lease_is_evicted_and_comes_back_cleanly(procs: Callable[..., Proc]) -> None:
    """SIGSTOP freezes the agent mid-task: heartbeats stop, its TCP connection stays open.

    Nothing lost: the caller gets exactly one outcome, the backup's result, soon after the
    lease (1 s) runs out. After SIGCONT the frozen agent finishes its copy and re-registers
    (held out once, as a flap); its late result is dropped, never forwarded.
    """
    cfg = RouterConfig(heartbeat_s=0.2, lease_s=1.0, attempt_timeout_s=15.0, holdout_base_s=0.3)

    async def main() -> None:
        async with serving(router_config=cfg) as server:
            victim = await asyncio.to_thread(_start_agent, procs, server.url, "frozen", 1500)
            await asyncio.to_thread(_start_agent, procs, server.url, "backup", 1500)
            reg = server.router.registry
            async with CountingController(server.url, "ctl") as ctl:
                job = asyncio.ensure_future(ctl.submit("work", {"n": 1}, timeout=20, task_id="t-frozen"))
                await wait_until(lambda: reg.get("frozen").in_flight == 1, what="dispatch to the victim")  # type: ignore[union-attr]
                victim.kill(signal.SIGSTOP)
                t0 = time.monotonic()
                try:
                    await wait_until(lambda: reg.get("frozen").status is Status.DEAD, timeout=5, what="eviction")  # type: ignore[union-attr]
                    evicted = time.monotonic() - t0
                    assert 0.5 < evicted < 3.0
                    assert (await job)["echo"] == {"n": 1}
                    assert time.monotonic() - t0 < evicted + 1.5 + 2.0  # failover at eviction, not at the 15 s attempt timeout
                finally:
                    victim.kill(signal.SIGCONT)
                # It wakes up, finds its connection closed, reconnects and registers again.
                await wait_until(lambda: server.proto.conn_of("frozen") is not None, timeout=10, what="re-registration")
                state = reg.get("frozen")
                assert state is not None and state.flaps == 1 and state.status in (Status.SUSPECT, Status.ACTIVE)
                await wait_until(lambda: reg.get("frozen").status is Status.ACTIVE, timeout=5, what="the hold-out to end")  # type: ignore[union-attr]
                await asyncio.sleep(0.5)  # room for a late result to arrive, if it were forwarded
                assert ctl.outcomes == {"t-frozen": 1}
                # and it serves again
                assert (await ctl.submit("work", "again", timeout=10))["echo"] == "again"
            counters = server.proto.counters
            assert counters["results_forwarded"] == counters["outcomes_completed"] == 2 and counters["outcomes_failed"] == 0
            assert reg.get("backup").succeeded >= 1  # type: ignore[union-attr]

    run(main(), timeout=40)


def test_a_flapping_agent_is_held_out_longer_each_time_and_retries_stay_in_budget(procs: Callable[..., Proc]) -> None:
    """An agent is SIGKILLed with tasks in flight and restarted, three times.

    Each re-registration within the flap window holds it out twice as long (0.25, 0.5, 1 s).
    The retry budget is small (2 in reserve, 0.1 per task), so failover of the killed
    agent's tasks is cut off by it. Nothing lost: every submitted task has exactly one
    outcome, completed or `agent-failed`; none is dropped or answered twice.
    """
    cfg = RouterConfig(holdout_base_s=0.25, flap_window_s=60.0, retry_budget_reserve=2.0, retry_budget_ratio=0.1, attempt_timeout_s=10.0)

    async def main() -> None:
        async with serving(router_config=cfg) as server:
            reg = server.router.registry
            await asyncio.to_thread(_start_agent, procs, server.url, "stable", 100, "--concurrency", "64")
            holds: list[float] = []
            outcomes: list[str] = []
            async with CountingController(server.url, "ctl") as ctl:
                for round_ in range(4):
                    flappy = await asyncio.to_thread(_start_agent, procs, server.url, "flappy", 3000, "--concurrency", "64")
                    state = reg.get("flappy")
                    assert state is not None and state.flaps == round_
                    if round_:
                        assert state.status is Status.SUSPECT
                        holds.append(state.holdout_until - state.last_seen)
                    await wait_until(lambda: reg.get("flappy").status is Status.ACTIVE, timeout=5, what="the hold-out to end")  # type: ignore[union-attr]
                    if round_ == 3:
                        break
                    jobs = [asyncio.ensure_future(ctl.submit("work", i, timeout=15)) for i in range(8)]
                    await wait_until(lambda: reg.get("flappy").in_flight >= 3, what="round robin to give flappy its share")  # type: ignore[union-attr]
                    flappy.kill(signal.SIGKILL)
                    outcomes += await asyncio.gather(*(_outcome(j) for j in jobs))
                await asyncio.sleep(0.2)
                assert sum(ctl.outcomes.values()) == len(ctl.outcomes) == len(outcomes) == 24  # one each
            assert holds == pytest.approx([0.25, 0.5, 1.0], abs=0.01)
            assert set(outcomes) <= {"completed", errors.AGENT_FAILED}
            assert outcomes.count("completed") >= 24 - 3 * 5  # the stable agent's share always completes
            samples = await asyncio.to_thread(metric_samples, server.url)
            submitted, retries = samples[("aicp_tasks_submitted_total", ())], samples[("aicp_retries_total", ())]
            assert submitted == 24
            assert retries <= cfg.retry_budget_reserve + cfg.retry_budget_ratio * submitted  # within budget ...
            assert outcomes.count(errors.AGENT_FAILED) >= 1  # ... which cut failover short
            assert outcomes.count(errors.AGENT_FAILED) == samples.get(("aicp_tasks_total", (("outcome", errors.AGENT_FAILED),)), 0)

    run(main(), timeout=50)


def test_when_every_agent_for_a_method_dies_the_caller_hears_at_once(procs: Callable[..., Proc]) -> None:
    """Both agents serving `work` are SIGKILLed mid-task; the tasks' deadline is 20 s.

    Nothing lost: each task ends with `agent-failed` or `no-agent` within a few seconds,
    not at its deadline, and a task submitted afterwards gets `no-agent` at once.
    """

    async def main() -> None:
        async with serving(router_config=RouterConfig(attempt_timeout_s=15.0)) as server:
            workers = [await asyncio.to_thread(_start_agent, procs, server.url, f"w{i}", 10_000) for i in range(2)]
            async with CountingController(server.url, "ctl") as ctl:
                jobs = [asyncio.ensure_future(ctl.submit("work", i, timeout=20)) for i in range(4)]
                await wait_until(lambda: sum(a.in_flight for a in server.router.registry.agents.values()) == 4, what="dispatch")
                t0 = time.monotonic()
                for w in workers:
                    w.kill(signal.SIGKILL)
                codes = await asyncio.gather(*(_outcome(j) for j in jobs))
                assert time.monotonic() - t0 < 3.0
                assert set(codes) <= {errors.AGENT_FAILED, errors.NO_AGENT}, codes
                t1 = time.monotonic()
                assert await _outcome(asyncio.ensure_future(ctl.submit("work", "late", timeout=20))) == errors.NO_AGENT
                assert time.monotonic() - t1 < 1.0
                await asyncio.sleep(0.2)
                assert sum(ctl.outcomes.values()) == len(ctl.outcomes) == 5
            assert server.proto.pending_tasks() == 0 and server.router.tasks_in_flight == 0

    run(main(), timeout=30)


def test_router_restart_clients_reconnect_and_a_resubmitted_task_id_gets_one_outcome(procs: Callable[..., Proc]) -> None:
    """The router process is SIGKILLed while a task runs, and a new one starts on the same port.

    The agent process and the controller reconnect on their own with exponential backoff and
    full jitter. A router keeps nothing across a restart (docs/SECURITY.md), so the
    controller re-sends its pending task under the same id and the new router runs it.
    Nothing lost: the caller gets exactly one outcome for that id per submission, the new
    router counts one task for it, and submitting the id again returns the stored outcome.
    """
    port = free_port()
    flags = ("-m", "aicp.server", "--port", str(port), "--log-level", "WARNING")

    async def main() -> None:
        first = procs(*flags)
        url = await asyncio.to_thread(router_url, first)
        http = url.replace("ws://", "http://")
        await asyncio.to_thread(_start_agent, procs, url, "ra", 800)
        async with CountingController(url, "ctl", backoff_cap_s=0.5) as ctl:
            assert (await ctl.submit("work", 1, timeout=10))["echo"] == 1
            job = asyncio.ensure_future(ctl.submit("work", 2, timeout=20, task_id="t-restart"))
            await wait_until(lambda: "t-restart" in ctl.waiter, what="the task to be sent")
            # Hold the controller's reconnect until the agent is back, so its re-sent task finds an agent.
            agent_back = asyncio.Event()
            reconnect = ctl.connect_with_retry

            async def after_the_agent() -> None:
                await agent_back.wait()
                await reconnect()

            ctl.connect_with_retry = after_the_agent  # type: ignore[method-assign]
            await asyncio.sleep(0.2)
            first.kill(signal.SIGKILL)
            await wait_until(lambda: not ctl.connected, what="the controller to notice")
            second = procs(*flags)
            await asyncio.to_thread(router_url, second)
            t0 = time.monotonic()

            def agent_connected() -> bool:
                try:
                    return any(a["agent_id"] == "ra" and a["connected"] for a in http_json(http + "/agents")["agents"])
                except OSError:
                    return False

            while not await asyncio.to_thread(agent_connected):
                assert time.monotonic() - t0 < 15, "the agent did not re-register"
                await asyncio.sleep(0.1)
            agent_back.set()
            assert (await job)["echo"] == 2
            assert ctl.registrations == 2
            again = await ctl.submit("work", 2, timeout=10, task_id="t-restart")
            assert again["echo"] == 2
            await asyncio.sleep(0.3)
            assert ctl.outcomes["t-restart"] == 2 and sum(ctl.outcomes.values()) == 3  # one per submission
            samples = await asyncio.to_thread(metric_samples, url)
            assert samples[("aicp_tasks_submitted_total", ())] == 1  # t-restart, once; the second submission came from the outcome cache
            assert samples[("aicp_tasks_total", (("outcome", "completed"),))] == 1
            status = await asyncio.to_thread(http_get, http + "/healthz")
            assert status[0] == 200

    run(main(), timeout=45)


def test_overload_sheds_new_work_and_never_drops_accepted_work(procs: Callable[..., Proc]) -> None:
    """A router with ``--max-tasks 4 --rate 40`` (burst 10) gets 16 tasks at once on one connection.

    Nothing lost: the 4 accepted tasks all complete; each of the other 12 is refused at once with
    `overloaded` (over max_tasks) or `rate-limited` (over the connection's rate), both seen;
    none is counted against the agent (no failure, no retry, no agent lost).
    """
    router = procs("-m", "aicp.server", "--port", "0", "--max-tasks", "4", "--rate", "40", "--log-level", "WARNING")
    url = router_url(router)
    _start_agent(procs, url, "busy", 500, "--concurrency", "16")

    async def main() -> None:
        async with CountingController(url, "ctl") as ctl:
            await asyncio.sleep(0.3)  # a full token bucket
            t0 = time.monotonic()
            codes = await asyncio.gather(*(_outcome(asyncio.ensure_future(ctl.submit("work", i, timeout=10))) for i in range(16)))
            assert codes[:4] == ["completed"] * 4, codes
            shed = codes[4:]
            assert set(shed) == {errors.OVERLOADED, errors.RATE_LIMITED}, codes
            assert time.monotonic() - t0 < 3.0
            assert await _outcome(asyncio.ensure_future(ctl.submit("work", "after", timeout=10))) == "completed"
            await asyncio.sleep(0.2)
            assert sum(ctl.outcomes.values()) == len(ctl.outcomes) == 17
        samples = await asyncio.to_thread(metric_samples, url)
        assert samples[("aicp_tasks_total", (("outcome", "completed"),))] == 5
        # shed before admission (PROTOCOL.md §6): a refusal, not an outcome
        assert samples[("aicp_rejections_total", (("code", errors.OVERLOADED),))] == shed.count(errors.OVERLOADED)
        assert ("aicp_tasks_total", (("outcome", errors.OVERLOADED),)) not in samples
        assert samples[("aicp_rejections_total", (("code", errors.RATE_LIMITED),))] == shed.count(errors.RATE_LIMITED)
        assert samples[("aicp_retries_total", ())] == 0 and samples[("aicp_agents_lost_total", ())] == 0
        (busy,) = (await asyncio.to_thread(http_json, url.replace("ws://", "http://") + "/agents"))["agents"]
        assert busy["status"] == "active" and busy["failed"] == 0 and busy["timed_out"] == 0 and busy["succeeded"] == 5
        assert busy["trust"] > 0.5  # only successes moved it

    run(main(), timeout=30)
