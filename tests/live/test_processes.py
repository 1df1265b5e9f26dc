"""Real processes: an agent killed with SIGKILL mid-task, SIGTERM on the router, and the shell demo."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
from live_helpers import ROOT, CountingController, Proc, agent, http_get, http_json, python_cmd, run, serving, wait_until
from prometheus_client.parser import text_string_to_metric_families

from aicp import errors
from aicp.live.controller import CONNECTION_LOST, AICPController
from aicp.live.handlers import Synthetic
from aicp.router import RouterConfig

pytestmark = [pytest.mark.live, pytest.mark.slow]

SERVER_LINE = r"listening on (ws://127\.0\.0\.1:(\d+))"


def test_failover_when_an_agent_process_is_killed_mid_task(procs: Callable[..., Proc]) -> None:
    """Issue 6, fault 1: SIGKILL mid-task.

    Nothing lost: the task goes to the backup at once (on the disconnect, not the 10 s
    attempt timeout) and the caller receives exactly one outcome frame for it. A killed
    process cannot send a late result; the SIGSTOP test in test_faults.py covers that one.
    """

    async def main() -> None:
        async with serving(router_config=RouterConfig(attempt_timeout_s=10.0)) as server:
            common = ["-m", "aicp", "agent", "--url", server.url, "--capability", "work", "--handler", "synthetic", "--service-time", "700"]
            victim = procs(*common, "--id", "victim")
            await asyncio.to_thread(victim.wait_for_line, "Agent victim registered")
            backup = procs(*common, "--id", "backup")
            await asyncio.to_thread(backup.wait_for_line, "Agent backup registered")
            async with CountingController(server.url, "ctl") as ctl:
                job = asyncio.ensure_future(ctl.submit("work", {"n": 1}, timeout=8, task_id="t-killed"))
                await wait_until(lambda: server.proto.pending_tasks() == 1 and server.router.registry.get("victim").in_flight == 1, what="dispatch to the victim")  # type: ignore[union-attr]
                victim.kill(signal.SIGKILL)
                t0 = time.monotonic()
                result = await job
                assert result["echo"] == {"n": 1}
                assert time.monotonic() - t0 < 5.0  # failover on disconnect, not on the 10 s attempt timeout
                await asyncio.sleep(0.2)
                assert ctl.outcomes == {"t-killed": 1}
            reg = server.router.registry
            assert reg.get("victim").succeeded == 0 and reg.get("backup").succeeded == 1  # type: ignore[union-attr]
            assert server.router.stats.retries == 1
            # exactly one outcome was delivered for the one task
            assert server.proto.counters["outcomes_completed"] == 1 and server.proto.counters["outcomes_failed"] == 0
            assert server.proto.counters["results_forwarded"] == 1

    run(main(), timeout=30)


def test_graceful_shutdown_on_sigterm(procs: Callable[..., Proc]) -> None:
    server = procs("-m", "aicp.server", "--port", "0", "--drain-timeout", "1.5")
    url = server.wait_for_line(SERVER_LINE).group(1)

    async def main() -> None:
        async with (
            agent(url, "worker", {"fast": Synthetic("constant", 400.0), "slow": Synthetic("constant", 6000.0)}, reconnect=False) as worker,
            AICPController(url, "ctl", reconnect=False) as ctl,
        ):
            fast = asyncio.ensure_future(ctl.submit("fast", "f", timeout=10))
            slow = asyncio.ensure_future(ctl.submit("slow", "s", timeout=10))
            await wait_until(lambda: worker.running == 2, what="both tasks running")
            server.kill(signal.SIGTERM)
            await wait_until(lambda: worker.goaway is not None, what="goaway")
            assert (await fast)["echo"] == "f"  # finished within the drain deadline
            with pytest.raises(errors.TaskError) as info:
                await slow
            assert info.value.code == errors.SHUTTING_DOWN

    run(main(), timeout=20)
    assert server.popen.wait(timeout=10) == 0
    assert "failed with shutting-down" in server.output()


def test_three_shell_demo_and_metrics(procs: Callable[..., Proc]) -> None:
    """python -m aicp.server; aicp agent --capability text.classify; aicp submit text.classify '{...}'."""
    server = procs("-m", "aicp.server", "--port", "0")
    url = server.wait_for_line(SERVER_LINE).group(1)
    agent_proc = procs("-m", "aicp", "agent", "--url", url, "--capability", "text.classify", "--count", "2", "--id", "demo")
    agent_proc.wait_for_line("Agent demo-0 registered")
    agent_proc.wait_for_line("Agent demo-1 registered")

    def submit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(python_cmd("-m", "aicp", "submit", *args, "--url", url), capture_output=True, text=True, timeout=20, cwd=ROOT)

    ok = submit("text.classify", '{"text": "excellent quality, highly recommended"}')
    assert ok.returncode == 0, ok.stderr
    assert '"label": "positive"' in ok.stdout
    bad = submit("image.label", "{}")
    assert bad.returncode == 1 and "no-agent" in bad.stderr and bad.stdout == ""
    malformed = submit("text.classify", '{"txt": 1}')  # the handler refuses it: a signed error result, retried, then agent-failed
    assert malformed.returncode == 1 and "agent-failed" in malformed.stderr and "ValueError" in malformed.stderr

    http = url.replace("ws://", "http://")
    families = {f.name: f for f in text_string_to_metric_families(http_get(http + "/metrics")[2].decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("aicp_tasks_total", (("outcome", "completed"),))] == 1
    assert samples[("aicp_tasks_total", (("outcome", "no-agent"),))] == 1
    assert samples[("aicp_tasks_total", (("outcome", "agent-failed"),))] == 1
    assert samples[("aicp_task_latency_seconds_count", (("outcome", "completed"),))] == 1
    assert samples[("aicp_agents", (("status", "active"),))] == 2
    assert samples[("aicp_retries_total", ())] >= 1
    assert samples[("aicp_open_connections", ())] == 2  # the two agents; each submit has disconnected
    listed = http_json(http + "/agents")
    assert {a["agent_id"] for a in listed["agents"]} == {"demo-0", "demo-1"}
    for a in listed["agents"]:
        assert {"capabilities", "status", "in_flight", "latency_ewma_ms", "success_rate", "trust"} <= set(a)
        assert a["capabilities"] == ["text.classify"] and a["status"] == "active"


def test_a_controller_without_reconnect_fails_fast_when_the_router_dies(procs: Callable[..., Proc]) -> None:
    server = procs("-m", "aicp.server", "--port", "0")
    url = server.wait_for_line(SERVER_LINE).group(1)

    async def main() -> None:
        async with agent(url, "worker", {"slow": Synthetic("constant", 5000.0)}, reconnect=False) as worker, AICPController(url, "ctl", reconnect=False) as ctl:
            job = asyncio.ensure_future(ctl.submit("slow", 1, timeout=20))
            await wait_until(lambda: worker.running == 1, what="the task to start")
            server.kill(signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(errors.TaskError) as info:
                await job
            assert info.value.code == CONNECTION_LOST and time.monotonic() - t0 < 2.0
            with pytest.raises(errors.TaskError):
                await ctl.submit("slow", 2, timeout=1)

    run(main(), timeout=15)
