"""Command-line entry points: keygen, and submit's exit codes when something is wrong."""

from __future__ import annotations

import argparse
import re
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from live_helpers import ROOT, Proc, agent, python_cmd, run

from aicp import errors
from aicp.cli.serve import add_arguments, build_server
from aicp.live.client import AICPWebSocketClient
from aicp.live.handlers import echo
from aicp.signing import Identity

pytestmark = pytest.mark.live


def _aicp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(python_cmd("-m", "aicp", *args), capture_output=True, text=True, timeout=20, cwd=ROOT)


def test_keygen_writes_a_private_key_file_once(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "agent.key"
    out = _aicp("keygen", str(key))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert out.stdout.strip() == Identity.load(key).public_key_text
    again = _aicp("keygen", str(key))
    assert again.returncode == 1 and "exists" in again.stderr


def test_submit_exit_codes_for_bad_json_and_an_unreachable_router() -> None:
    bad = _aicp("submit", "echo", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _aicp("submit", "echo", "{}", "--url", f"ws://127.0.0.1:{port}")
    assert down.returncode == 2 and "unreachable" in down.stderr


def test_serve_flags_reach_the_core_and_the_allowlist_admits_only_listed_keys(tmp_path: Path) -> None:
    admitted, stranger = Identity.generate(), Identity.generate()
    allow = tmp_path / "allow.txt"
    allow.write_text(f"# admitted agents\n{admitted.public_key_text}\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "0", "--strategy", "least_loaded", "--heartbeat", "2", "--lease", "7", "--window", "30", "--allowlist", str(allow),
         "--max-frame", "65536", "--max-connections", "5", "--rate", "100", "--drain-timeout", "3", "--verify", "edge"]
    )
    server = build_server(args)
    assert server.router.strategy.name == "least_loaded"
    assert (server.router.config.heartbeat_s, server.router.config.lease_s) == (2.0, 7.0)
    cfg = server.proto.config
    assert (cfg.window_s, cfg.max_frame_bytes, cfg.rate_per_s, cfg.verify) == (30.0, 65536, 100.0, "edge")
    assert cfg.allowlist == frozenset({admitted.public_key_text})
    assert (server.limits.max_connections, server.limits.max_frame_bytes, server.limits.drain_s) == (5, 65536, 3.0)

    async def main() -> None:
        await server.start()
        try:
            async with agent(server.url, "ok", {"echo": echo}, identity=admitted) as ok:
                assert ok.registrations == 1
            refused = AICPWebSocketClient(server.url, "nope", stranger, reconnect=False)
            with pytest.raises(errors.ProtocolError) as info:
                await refused.connect()
            assert info.value.code == errors.NOT_ALLOWED
        finally:
            await server.stop(drain_s=0)

    run(main())


def test_a_fleet_prints_ten_agent_lines_then_counts(procs: Callable[..., Proc]) -> None:
    """``aicp agent --count N`` names its first ten agents, then reports counts, not N lines."""
    server = procs("-m", "aicp.server", "--port", "0")
    url = server.wait_for_line(r"listening on (ws://127\.0\.0\.1:\d+)").group(1)
    fleet = procs("-m", "aicp", "agent", "--url", url, "--capability", "echo", "--count", "25", "--id", "fleet", "--heartbeat", "30")
    fleet.wait_for_line(r"^25 of 25 agents registered in \d+\.\d s$", timeout=30)
    lines = fleet.output().splitlines()
    named = [line for line in lines if re.match(r"Agent fleet-\d+ registered with ", line)]
    counts = [line for line in lines if " agents registered in " in line]
    assert len(named) == 10 and len(set(named)) == 10
    # after the ten named ones: a line at each further tenth of the fleet (12, 14, ..., 24 of 25), then 25 of 25
    assert counts[-1].startswith("25 of 25") and 1 <= len(counts) <= 10
    assert [int(c.split()[0]) for c in counts] == sorted(int(c.split()[0]) for c in counts)
