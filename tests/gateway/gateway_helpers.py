"""Helpers for the gateway tests: processes on 127.0.0.1, killed by PID; API keys; readiness."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "live"))
from live_helpers import Proc, python_cmd, router_url  # noqa: F401

TOKENS = {
    "alice": "alice-token-0123456789abcdef",  # text.classify, echo, slow.*, kill.work
    "bob": "bob-token-0123456789abcdef01",  # echo only
    "limited": "limited-token-0123456789abcd",  # everything; used to run over the per-key rate
}
RATE = 20.0
BURST = 40.0


def start(args: list[str]) -> Proc:
    return Proc(python_cmd(*args))


def stop(procs: list[Proc]) -> None:
    for p in procs:
        p.kill(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=5)
        p._reader.join(timeout=2)


def gateway_url(proc: Proc, timeout: float = 30.0) -> str:
    return proc.wait_for_line(r"gateway listening on (http://127\.0\.0\.1:\d+)", timeout).group(1)


def start_gateway(router: str, key_file: Path, api_keys: Path | None, *extra: str) -> Proc:
    args = ["-m", "aicp", "gateway", "--url", router, "--port", "0", "--key", str(key_file), *extra]
    if api_keys is not None:
        args += ["--api-keys", str(api_keys)]
    return start(args)


@dataclass
class Stack:
    router: str
    gateway: str
    tmp: Path
    api_keys: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def headers(self, who: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who]}"}


def wait_ready(url: str, capabilities: set[str], headers: dict[str, str], timeout: float = 20.0) -> None:
    """Until the gateway is connected and sees a live agent for every capability."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=2).json()["connected"]:
                last = httpx.get(url + "/capabilities", headers=headers, timeout=2).json()["capabilities"]
                if capabilities <= set(last):
                    return
        time.sleep(0.1)
    raise AssertionError(f"gateway at {url} not ready; capabilities {last}")


def http_answers(conn: socket.socket, n: int) -> list[bytes]:
    """The next ``n`` whole HTTP answers (head, blank line, body of its ``content-length``) read from a raw socket, in order."""
    data = b""
    found: list[bytes] = []
    while len(found) < n:
        chunk = conn.recv(65536)
        assert chunk, (found, data)
        data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:")
            if len(rest) < length:
                break
            found.append(head + b"\r\n\r\n" + rest[:length])
            data = rest[length:]
    return found
