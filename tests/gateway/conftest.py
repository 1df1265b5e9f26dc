"""One real router, real agent processes and a real gateway (uvicorn) per test module, all on 127.0.0.1.

Every process is started with a free port chosen by the kernel and killed by PID in
a ``finally``, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("a2a")

from gateway_helpers import BURST, RATE, TOKENS, Proc, Stack, gateway_url, router_url, start, start_gateway, stop, wait_ready


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    api_keys = tmp / "api-keys"
    api_keys.write_text(
        "# token name methods\n"
        f"{TOKENS['alice']} alice text.classify echo slow.* kill.work\n"
        f"{TOKENS['bob']} bob echo\n"
        f"{TOKENS['limited']} limited *\n"
    )
    procs: list[Proc] = []
    try:
        router = start(["-m", "aicp", "serve", "--port", "0", "--attempt-timeout", "10"])
        procs.append(router)
        url = router_url(router)
        agent_args = ["-m", "aicp", "agent", "--url", url]
        procs.append(start([*agent_args, "--capability", "text.classify", "--capability", "echo", "--count", "2"]))
        procs.append(start([*agent_args, "--capability", "slow.work", "--service-time", "2000", "--concurrency", "4"]))
        killable = [start([*agent_args, "--capability", "kill.work", "--service-time", "4000", "--id", f"kill-{i}"]) for i in range(2)]
        procs.extend(killable)
        gw = start_gateway(url, tmp / "gateway.key", api_keys, "--rate", str(RATE), "--burst", str(BURST), "--max-body", "65536")
        procs.append(gw)
        s = Stack(url, gateway_url(gw), tmp, api_keys, {"router": router, "gateway": gw, "kill-0": killable[0], "kill-1": killable[1]})
        wait_ready(s.gateway, {"text.classify", "echo", "slow.work", "kill.work"}, s.headers())
        yield s
    finally:
        stop(procs)
