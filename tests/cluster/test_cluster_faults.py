"""Three router processes on a real nats-server: SIGKILL one under load.

Agents are processes too (``aicp agent`` with every router's URL, its own first);
the controllers run here, one per router with every URL, and count every outcome
frame they receive, by task id.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from live_helpers import CountingController, Proc, http_json, router_url, run
from nats_helpers import NatsServer

from aicp import errors
from aicp.lab.bench.live import free_port

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.load]


def start_cluster(procs: Callable[..., Proc], nats: NatsServer, names: list[str], agents_per_router: int) -> tuple[list[Proc], list[str]]:
    routers = [
        procs("-m", "aicp", "serve", "--port", str(free_port()), "--cluster", nats.url, "--router-id", name,
              "--strategy", "least_loaded", "--attempt-timeout", "3", "--heartbeat", "1", "--lease", "3")
        for name in names
    ]
    urls = [router_url(p) for p in routers]
    for p in routers:
        p.wait_for_line("joined the cluster")
    agents = []
    for i, name in enumerate(names):
        order = urls[i:] + urls[:i]
        agents.append(procs("-m", "aicp", "agent", "--url", ",".join(order), "--capability", "work", "--handler", "synthetic",
                            "--service-time", "20", "--count", str(agents_per_router), "--concurrency", "4", "--id", f"agent-{name}",
                            "--heartbeat", "1"))
    for a in agents:
        a.wait_for_line("registered", 15.0)
    return routers, urls


def test_sigkill_one_of_three_routers_under_load_every_task_ends_exactly_once(procs: Callable[..., Proc], nats_server: NatsServer) -> None:
    routers, urls = start_cluster(procs, nats_server, ["r1", "r2", "r3"], agents_per_router=2)

    async def main() -> tuple[dict[str, int], int, collections.Counter[str], list[CountingController]]:
        ctls = []
        for i in range(3):
            ctl = CountingController(urls[i:] + urls[:i], f"ctl-{i}", backoff_base_s=0.05, backoff_cap_s=0.5)
            await ctl.start(retry=True)
            ctls.append(ctl)
        await asyncio.sleep(0.5)  # summaries both ways
        by_code: collections.Counter[str] = collections.Counter()
        ids: list[tuple[CountingController, str]] = []

        async def one(ctl: CountingController, tid: str) -> None:
            try:
                await ctl.submit("work", {"id": tid}, timeout=8.0, task_id=tid)
                by_code["completed"] += 1
            except errors.TaskError as exc:
                by_code[exc.code] += 1

        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        killed = False
        n = 0
        while time.monotonic() - start < 4.0 and n < 400:  # bounded in time and count
            for ctl in ctls:
                tid = f"{ctl.peer_id}-t{n}"
                ids.append((ctl, tid))
                tasks.append(loop.create_task(one(ctl, tid)))
            n += 1
            if not killed and time.monotonic() - start > 1.5:
                routers[1].kill(signal.SIGKILL)
                killed = True
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        frames = {tid: ctl.outcomes[tid] for ctl, tid in ids}
        for ctl in ctls:
            await ctl.close()
        return frames, len(ids), by_code, ctls

    frames, submitted, by_code, ctls = run(main(), timeout=90.0)
    lost = [tid for tid, count in frames.items() if count == 0]
    duplicates = [tid for tid, count in frames.items() if count > 1]
    print(f"submitted={submitted} outcomes={dict(by_code)} lost={len(lost)} duplicates={len(duplicates)}")
    assert sum(by_code.values()) == submitted
    assert lost == [] and duplicates == []
    assert by_code["completed"] >= submitted * 0.9, by_code  # failover, not failure
    assert by_code.get(errors.TIMEOUT, 0) == 0
    assert ctls[1].server_url != urls[1]  # the killed router's controller moved on
    # the killed router's agents registered elsewhere: the survivors hold all six
    health = [http_json(u.replace("ws://", "http://") + "/healthz") for u in (urls[0], urls[2])]
    assert sum(h["agents"]["active"] for h in health) == 6, health
    assert all(h["cluster"]["routers"] == [n] for h, n in zip(health, ("r3", "r1"))), [h["cluster"] for h in health]
    print("survivors:", [{k: h["cluster"][k] for k in ("tasks_forwarded_out", "tasks_forwarded_in", "routers_lost")} for h in health])


def test_make_demo_cluster_prints_the_outcome_table(procs: Callable[..., Proc]) -> None:
    demo = procs("-m", "aicp.lab.demo_cluster", "--duration", "3", "--rate", "90")
    run_dir = Path(demo.wait_for_line(r"run folder (\S+) ", timeout=30.0)[1])
    demo.wait_for_line(r"router r2 SIGKILLed at", timeout=90.0)  # every process is started by then
    started = psutil.Process(demo.popen.pid).children(recursive=True)
    demo.wait_for_line(r"every task ended exactly once|FAIL", timeout=90.0)
    assert demo.popen.wait(timeout=30) == 0, demo.output()
    out = demo.output()
    assert len(started) >= 7, started  # nats-server, 3 routers, 3 agent processes
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive  # nothing outlives the demo
    assert not run_dir.exists(), sorted(run_dir.rglob("*"))  # a success leaves no folder behind
    assert "run folder kept" not in out
    row = out.splitlines()[out.splitlines().index(next(line for line in out.splitlines() if line.strip().startswith("submitted"))) + 1].split()
    submitted, completed, failed, lost, duplicates = (int(x) for x in row[:5])
    assert submitted > 0 and completed + failed == submitted and lost == 0 and duplicates == 0
    assert "router r2 killed" in out


@pytest.mark.parametrize(("ok", "keep", "kept"), [(True, False, False), (True, True, True), (False, False, True), (False, True, True)])
def test_demo_cluster_run_folder_is_kept_only_on_failure_or_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str], ok: bool, keep: bool,
                                                                       kept: bool) -> None:
    from aicp.lab.demo_cluster import settle_run_dir

    run_dir = tmp_path / "aicp-demo-cluster-x"
    (run_dir / "keys").mkdir(parents=True)
    (run_dir / "router-r1-1.log").write_text("log")
    settle_run_dir(run_dir, ok, keep)
    assert run_dir.exists() == kept
    assert (f"run folder kept: {run_dir}" in capsys.readouterr().out) == kept


def test_demo_cluster_keep_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicp.lab.demo_cluster import parse_args

    for env, argv, want in [("", [], False), ("1", [], True), ("0", [], False), ("", ["--keep"], True)]:
        monkeypatch.setenv("AICP_DEMO_KEEP", env)
        assert parse_args(argv).keep is want, (env, argv)
