"""The Python API: ``Agent`` decorators, serve/stop with draining, run() under SIGTERM, key files, ``Controller`` results."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nacl.exceptions
import nacl.signing
import pytest
from live_helpers import Proc, run, serving, wait_until
from live_helpers import agent as live_agent

import aicp
from aicp import errors
from aicp.live import keys
from aicp.live.agent import Agent
from aicp.live.client import AICPWebSocketClient, LeaseKeeper
from aicp.live.controller import Controller, TaskResult
from aicp.signing import CONTEXT, Identity

pytestmark = pytest.mark.live


async def _submit_when_ready(ctl: Controller, method: str, obj: Any, **kwargs: Any) -> TaskResult:
    """Submit once the agent serving ``method`` has registered (until then the router answers no-agent)."""
    for _ in range(200):
        try:
            return await ctl.submit(method, obj, **kwargs)
        except errors.TaskError as exc:
            if exc.code != errors.NO_AGENT:
                raise
            await asyncio.sleep(0.02)
    raise AssertionError(f"no agent for {method} registered")


def test_the_package_exports_the_api() -> None:
    assert aicp.Agent is Agent and aicp.Controller is Controller and aicp.TaskResult is TaskResult
    assert aicp.Identity is Identity and aicp.TaskError is errors.TaskError
    assert aicp.AICPWebSocketClient is AICPWebSocketClient
    assert aicp.AICPController.__name__ == "AICPController" and aicp.AICPWebSocketServer.__name__ == "AICPWebSocketServer"


def test_handler_decorator_serves_sync_and_async_functions(tmp_path: Path) -> None:
    agent = Agent("deco", key_dir=tmp_path)

    @agent.handler("text.upper")
    async def upper(payload: dict[str, str]) -> str:
        await asyncio.sleep(0)
        return payload["text"].upper()

    @agent.handler("text.length")
    def length(payload: dict[str, str]) -> int:
        return len(payload["text"])

    @agent.handler("text.blocking", in_thread=True)
    def blocking(payload: dict[str, str]) -> str:
        return threading.current_thread().name

    @agent.handler("text.broken")
    def broken(payload: Any) -> None:
        raise ValueError("no such word")

    assert length({"text": "abc"}) == 3  # the decorator returns the function itself
    assert agent.client.session.capabilities == ["text.upper", "text.length", "text.blocking", "text.broken"]

    async def main() -> None:
        async with serving() as server:
            agent.client.server_url = server.url
            serve = asyncio.ensure_future(agent.serve())
            async with Controller(server.url) as ctl:
                assert (await _submit_when_ready(ctl, "text.upper", {"text": "hi"})).value == "HI"
                assert (await ctl.submit("text.length", {"text": "four"})).value == 4
                assert (await ctl.submit("text.blocking", {"text": ""})).value != threading.main_thread().name
                with pytest.raises(errors.TaskError) as info:
                    await ctl.submit("text.broken", {})
                assert info.value.code == errors.AGENT_FAILED and "ValueError: no such word" in info.value.message
                with pytest.raises(errors.TaskError) as info:
                    await ctl.submit("text.unknown", {})
                assert info.value.code == errors.NO_AGENT
            agent.stop()
            await serve
            assert agent.client.closing and not agent.client.connected

    run(main())


def test_stop_drains_running_tasks_and_refuses_new_ones(tmp_path: Path) -> None:
    """A stopping agent finishes what it runs; a task sent meanwhile gets a signed refusal, which the router reports."""
    agent = Agent("drainer", key_dir=tmp_path, drain_timeout=10.0)
    release = asyncio.Event()

    @agent.handler("slow")
    async def slow(payload: int) -> int:
        await release.wait()
        return payload * 2

    async def main() -> None:
        async with serving() as server:
            agent.client.server_url = server.url
            serve = asyncio.ensure_future(agent.serve())
            async with Controller(server.url) as ctl:
                await wait_until(lambda: agent.client.connected, what="registration")
                first = asyncio.ensure_future(ctl.submit("slow", 21))
                await wait_until(lambda: agent.client.running == 1, what="the first task running")
                agent.stop()
                await wait_until(lambda: agent.client.draining, what="draining")
                with pytest.raises(errors.TaskError) as info:
                    await ctl.submit("slow", 1)
                assert info.value.code == errors.AGENT_FAILED and "draining" in info.value.message
                assert not serve.done() and not first.done()
                release.set()
                assert (await first).value == 42
                await asyncio.wait_for(serve, 5)
            assert "drainer" not in server.proto.connected_peers()

    run(main())


def test_the_older_heartbeat_loop_skips_beats_after_results_and_after_a_stall(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving() as server, live_agent(server.url, "old-style", {"echo": lambda x: x}, heartbeat=0.2,
                                                   identity=Identity.generate()) as client:
            beats: list[float] = []  # loop times the heartbeat frames were made, counted where the frame is signed
            make = client.session.heartbeat_frame

            def counted(*args: Any) -> bytes:
                beats.append(loop.time())
                return make(*args)

            client.session.heartbeat_frame = counted  # type: ignore[method-assign]
            loop = asyncio.get_running_loop()
            await wait_until(lambda: len(beats) >= 1, what="a heartbeat while idle")
            # 1.2 s of results at least every ~40 ms: six intervals in which the results renew the lease
            before = len(beats)
            until = loop.time() + 1.2
            while loop.time() < until:
                assert await server.route_message("echo", 1, timeout=5.0) == 1
                await asyncio.sleep(0.02)
            assert len(beats) - before <= 2  # one may fall due as it starts, another in a stall of the loaded machine
            await wait_until(lambda: len(beats) >= before + 3, what="heartbeats once idle again")
            # The event loop is blocked for six intervals: one heartbeat when it runs again, not six.
            time.sleep(1.2)
            stalled = len(beats)
            await asyncio.sleep(0.05)
            assert len(beats) - stalled <= 2
            assert client.heartbeats_sent == len(beats)

    run(main())


def test_serve_sends_heartbeats_only_in_intervals_without_results_and_leaves_the_keeper(tmp_path: Path) -> None:
    agent = Agent("beater", key_dir=tmp_path, heartbeat=0.25)
    agent.handler("echo")(lambda x: x)

    async def main() -> None:
        async with serving() as server:
            agent.client.server_url = server.url
            serve = asyncio.ensure_future(agent.serve())
            await wait_until(lambda: agent.client._keeper is not None, what="the lease keeper")
            keeper = agent.client._keeper
            assert keeper is not None and keeper.enrolled == 1
            await wait_until(lambda: agent.client.heartbeats_sent >= 1, what="a heartbeat while idle")
            state = server.router.registry.get("beater")
            assert state is not None
            # 1.25 s of results at least every ~40 ms: five heartbeat intervals in which the results renew the lease
            beats = agent.client.heartbeats_sent
            loop = asyncio.get_running_loop()
            until = loop.time() + 1.25
            last = loop.time()
            quiet = 0  # heartbeats the agent may owe: results-free stretches as long as an interval (minus the slack)
            while loop.time() < until:
                asked = loop.time()
                assert await server.route_message("echo", 1, timeout=5.0) == 1
                # the agent sent the result before after ``last`` and this one by now: no result in between for at most this long
                quiet += int((loop.time() - last) // (0.25 * 15 / 16))
                last = asked
                await asyncio.sleep(0.02)
            quiet += int((loop.time() - last) // (0.25 * 15 / 16))
            # one may fall due as the results start; any more only in stretches without results (a stall of a loaded machine)
            assert agent.client.heartbeats_sent - beats <= 1 + quiet, (agent.client.heartbeats_sent - beats, quiet)
            await wait_until(lambda: agent.client.heartbeats_sent >= beats + 3, timeout=10.0, what="heartbeats once idle again")
            agent.stop()
            await serve
            assert agent.client._keeper is None and keeper.enrolled == 0

    run(main())


def test_a_refused_registration_is_raised_not_retried_forever(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving() as server:
            first = Agent("taken", server.url, identity=Identity.generate())
            first.handler("echo")(lambda p: p)
            serve = asyncio.ensure_future(first.serve())
            await wait_until(lambda: first.client.connected, what="first registration")
            impostor = Agent("taken", server.url, identity=Identity.generate())
            with pytest.raises(errors.ProtocolError) as info:
                await asyncio.wait_for(impostor.serve(), 5)
            assert info.value.code == errors.KEY_MISMATCH
            first.stop()
            await serve

    run(main())


# ----------------------------------------------------------------------------- keys
def test_key_file_is_created_0600_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICP_KEY_DIR", str(tmp_path / "keys"))
    first = Agent("team/a1")
    path = tmp_path / "keys" / "team%2Fa1.key"  # "/" in an id cannot reach another directory
    assert keys.key_path("team/a1") == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Agent("team/a1").identity.public_key_text == first.identity.public_key_text
    assert Agent("team/a2").identity.public_key_text != first.identity.public_key_text
    assert Identity.load(path).public_key_text == first.identity.public_key_text
    # an explicit key directory or file wins over the environment
    other = Agent("team/a1", key_dir=tmp_path / "elsewhere")
    assert other.identity.public_key_text != first.identity.public_key_text
    assert (tmp_path / "elsewhere" / "team%2Fa1.key").exists()
    assert Agent("x", key_file=path).identity.public_key_text == first.identity.public_key_text
    given = Identity.generate()
    assert Agent("team/a1", identity=given).identity is given


def test_default_key_dir_follows_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AICP_KEY_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.default_key_dir() == tmp_path / "xdg" / "aicp" / "keys"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.default_key_dir() == tmp_path / "home" / ".config" / "aicp" / "keys"
    monkeypatch.setenv("AICP_KEY_DIR", str(tmp_path / "explicit"))
    assert keys.default_key_dir() == tmp_path / "explicit"


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    Agent("loose", key_dir=tmp_path)
    (tmp_path / "loose.key").chmod(0o644)
    with pytest.raises(errors.LocalError, match="chmod 600"):
        Agent("loose", key_dir=tmp_path)


def test_concurrent_creators_of_one_key_file_get_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "race.key"
    barrier = threading.Barrier(8)
    found: list[str] = []

    def create() -> None:
        barrier.wait()
        found.append(Identity.load_or_create(path).public_key_text)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(found) == 8 and len(set(found)) == 1
    assert Identity.load(path).public_key_text == found[0]


# ----------------------------------------------------------------------------- controller results
def test_controller_result_verifies_with_plain_pynacl(tmp_path: Path) -> None:
    agent = Agent("signer", key_dir=tmp_path)
    agent.handler("sum")(lambda p: {"total": sum(p)})

    async def main() -> None:
        async with serving() as server:
            agent.client.server_url = server.url
            serve = asyncio.ensure_future(agent.serve())
            async with Controller(server.url) as ctl:
                result = await _submit_when_ready(ctl, "sum", [1, 2, 3], task_id="sum-1")
                assert isinstance(result, TaskResult)
                assert result.value == {"total": 6}
                assert (result.task_id, result.method, result.agent_id) == ("sum-1", "sum", "signer")
                assert result.public_key == agent.identity.public_key
                assert result.public_key_text == agent.identity.public_key_text
                assert result.signed_bytes == CONTEXT + result.body
                # plain PyNaCl, no AICP code: the signature covers the signed bytes under the agent's key
                nacl.signing.VerifyKey(result.public_key).verify(result.signed_bytes, result.signature)
                body = json.loads(result.body)
                assert body["type"] == "result" and body["task_id"] == "sum-1" and body["sender"] == "signer"
                assert body["requester"] == ctl.peer_id and body["payload"] == {"total": 6}
                frame = json.loads(result.frame)
                assert frame["key"] == result.public_key_text and frame["sender"] == "signer"
                assert result.body in result.frame  # the body travelled byte for byte inside the frame
                result.verify()
                # a changed byte, or another key, does not verify
                tampered = result.body.replace(b'"total":6', b'"total":7')
                assert tampered != result.body
                with pytest.raises(nacl.exceptions.BadSignatureError):
                    nacl.signing.VerifyKey(result.public_key).verify(CONTEXT + tampered, result.signature)
                with pytest.raises(nacl.exceptions.BadSignatureError):
                    nacl.signing.VerifyKey(Identity.generate().public_key).verify(result.signed_bytes, result.signature)
                with pytest.raises(errors.VerifyError):
                    msgspec.structs.replace(result, body=tampered).verify()
                # the same task id gets the same, stored outcome
                again = await ctl.submit("sum", [1, 2, 3], task_id="sum-1")
                assert again.body == result.body and again.signature == result.signature
            agent.stop()
            await serve

    run(main())


def test_controller_with_an_id_keeps_its_key(tmp_path: Path) -> None:
    a = Controller("ws://127.0.0.1:1", "ops", key_dir=tmp_path)
    b = Controller("ws://127.0.0.1:1", "ops", key_dir=tmp_path)
    assert a.identity.public_key_text == b.identity.public_key_text
    assert stat.S_IMODE((tmp_path / "ops.key").stat().st_mode) == 0o600
    anonymous = Controller("ws://127.0.0.1:1")
    assert anonymous.peer_id.startswith("controller-") and anonymous.identity.public_key_text != a.identity.public_key_text


def _cli_agents(*argv: str) -> list[Agent]:
    import argparse

    from aicp.cli import agent as agent_cli

    parser = argparse.ArgumentParser()
    agent_cli.add_arguments(parser)
    return agent_cli.build_agents(parser.parse_args(["--url", "ws://127.0.0.1:1", *argv]))


def test_an_agent_without_an_id_takes_it_from_its_key_file(tmp_path: Path) -> None:
    first = _cli_agents("--key", str(tmp_path / "k"))
    again = _cli_agents("--key", str(tmp_path / "k"))  # a restart with the same key file
    assert [a.agent_id for a in again] == [a.agent_id for a in first] == [keys.default_agent_id(first[0].identity)]
    assert first[0].agent_id.startswith("agent-") and len(first[0].agent_id) == len("agent-") + 12
    fleet = _cli_agents("--key", str(tmp_path / "f"), "--count", "3")
    assert [a.agent_id for a in _cli_agents("--key", str(tmp_path / "f"), "--count", "3")] == [a.agent_id for a in fleet]
    assert len({a.agent_id for a in fleet} | {first[0].agent_id}) == 4  # one id per key
    named = _cli_agents("--key", str(tmp_path / "f"), "--count", "2", "--id", "w")
    assert [a.agent_id for a in named] == ["w-0", "w-1"] and named[1].identity.public_key_text == fleet[1].identity.public_key_text


def test_agents_without_id_or_key_keep_their_keys_in_the_first_free_default_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aicp.cli import agent as agent_cli

    monkeypatch.setenv("AICP_KEY_DIR", str(tmp_path))
    monkeypatch.setattr(agent_cli, "HELD_SLOTS", [])
    # Another process holds slot 0 (as an agent running beside this one would): this one gets slot 1.
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from aicp.live import keys; keys.claim_default_slot(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        one = _cli_agents("--count", "2")
        assert (tmp_path / "agent-default-1.key.0").exists() and (tmp_path / "agent-default-1.key.1").exists()
        assert [a.agent_id for a in one] == [keys.default_agent_id(Identity.load(tmp_path / f"agent-default-1.key.{i}")) for i in range(2)]
        beside = _cli_agents()  # slot 1 is held by this process now: slot 2
        assert beside[0].identity.public_key_text == Identity.load(tmp_path / "agent-default-2.key").public_key_text
    finally:
        holder.kill()
        holder.wait()
        for fd in agent_cli.HELD_SLOTS:
            os.close(fd)
    agent_cli.HELD_SLOTS.clear()
    # Everyone has stopped: a restart takes slot 0 again; started beside it, the two-agent restart takes slot 1, and its ids.
    assert _cli_agents()[0].identity.public_key_text != beside[0].identity.public_key_text
    assert (tmp_path / "agent-default-0.key").exists()
    assert [a.agent_id for a in _cli_agents("--count", "2")] == [a.agent_id for a in one]
    for fd in agent_cli.HELD_SLOTS:
        os.close(fd)


# ----------------------------------------------------------------------------- run() in a real process
AGENT_SCRIPT = """
import asyncio, sys
from aicp import Agent

agent = Agent("graceful", url=sys.argv[1], key_dir=sys.argv[2], drain_timeout=10)

@agent.handler("slow")
async def slow(payload):
    print("started", payload["n"], flush=True)
    await asyncio.sleep(payload["sleep"])
    return {"done": payload["n"]}

agent.run()
print("run() returned", flush=True)
"""


def test_run_finishes_the_running_task_on_sigterm_then_exits_0(procs: Callable[..., Proc], tmp_path: Path) -> None:
    script = tmp_path / "graceful_agent.py"
    script.write_text(textwrap.dedent(AGENT_SCRIPT))

    async def main() -> None:
        async with serving() as server:
            proc = procs(str(script), server.url, str(tmp_path / "keys"))
            await asyncio.to_thread(proc.wait_for_line, "agent graceful registered")
            async with Controller(server.url) as ctl:
                job = asyncio.ensure_future(ctl.submit("slow", {"n": 7, "sleep": 1.0}, timeout=10))
                await asyncio.to_thread(proc.wait_for_line, "started 7")
                proc.kill(signal.SIGTERM)
                result = await job
                assert result.value == {"done": 7} and result.agent_id == "graceful"
            code = await asyncio.to_thread(proc.popen.wait, 10)
            assert code == 0, proc.output()
            assert "run() returned" in proc.output()
            assert "graceful" not in server.proto.connected_peers()

    run(main(), timeout=30)


def test_a_second_sigterm_skips_the_drain(procs: Callable[..., Proc], tmp_path: Path) -> None:
    """The script drains for up to 10 s; a second signal leaves at once and the task fails over (here: to nobody)."""
    script = tmp_path / "graceful_agent.py"
    script.write_text(textwrap.dedent(AGENT_SCRIPT))

    async def main() -> None:
        async with serving() as server:
            proc = procs(str(script), server.url, str(tmp_path / "keys"))
            await asyncio.to_thread(proc.wait_for_line, "agent graceful registered")
            async with Controller(server.url) as ctl:
                job = asyncio.ensure_future(ctl.submit("slow", {"n": 8, "sleep": 60.0}, timeout=30))
                await asyncio.to_thread(proc.wait_for_line, "started 8")
                proc.kill(signal.SIGTERM)
                await asyncio.to_thread(proc.wait_for_line, "graceful: stopping; 1 task")
                proc.kill(signal.SIGTERM)
                assert await asyncio.to_thread(proc.popen.wait, 5) == 0, proc.output()  # well before the 10 s drain
                with pytest.raises(errors.TaskError) as info:
                    await job
                assert info.value.code == errors.AGENT_FAILED

    run(main(), timeout=30)


def test_agent_process_interrupted_with_sigint_exits_0(procs: Callable[..., Proc], tmp_path: Path) -> None:
    script = tmp_path / "graceful_agent.py"
    script.write_text(textwrap.dedent(AGENT_SCRIPT))

    async def main() -> None:
        async with serving() as server:
            proc = procs(str(script), server.url, str(tmp_path / "keys"))
            await asyncio.to_thread(proc.wait_for_line, "agent graceful registered")
            proc.kill(signal.SIGINT)
            assert await asyncio.to_thread(proc.popen.wait, 10) == 0, proc.output()

    assert sys.platform != "win32"
    run(main(), timeout=30)


def test_the_lease_keeper_serves_each_client_when_due_and_rearms_for_the_earliest_left() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        keeper = LeaseKeeper(loop)
        clients = [AICPWebSocketClient("ws://127.0.0.1:9", f"k{i}", Identity.generate()) for i in range(10)]
        now = loop.time()
        # due every 10 s from now, with a 1000 s interval: the slack is MAX_SLACK_S (0.25 s), so _fire() below, at any time in
        # the next 9.75 s (a loaded machine may stall this test between two lines), finds k0 due and the others not
        for i, client in enumerate(clients):
            client._beat_interval = 1000.0  # as serve(heartbeat=1000) sets it
            keeper.enrol(client, now + 10.0 * i, interval=1000.0)
        assert keeper.slack == LeaseKeeper.MAX_SLACK_S
        assert keeper._armed_at == now
        keeper._fire()  # serves k0 only; not connected, it asks again in one interval
        assert keeper._armed_at == now + 10.0  # the earliest left, not k0's next turn a whole interval later
        assert sorted(due for due, _, _, _ in keeper._heap)[-1] >= now + 1000.0
        keeper.leave(clients[1])
        assert keeper.enrolled == 9
        for client in clients[2:] + clients[:1]:
            keeper.leave(client)
        assert keeper.enrolled == 0 and keeper._handle is None and not keeper._heap

    run(main())
