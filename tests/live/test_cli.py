"""Command-line entry points: keygen, and submit's exit codes when something is wrong."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest
from live_helpers import ROOT, python_cmd

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
