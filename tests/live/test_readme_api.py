"""The README's "Python API" snippets, run exactly as printed against a router process.

The snippets are cut out of README.md by their ``<!-- snippet: NAME -->`` markers and
the fenced block that follows; the only change is the router's port. The agent runs
as a real process, is stopped with SIGTERM and started again under the same id while
the router still holds the id's key binding: it must be let back in, not refused with
``key-mismatch``.
"""

from __future__ import annotations

import re
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from live_helpers import KEY_DIR, ROOT, Proc, router_url

from aicp.signing import Identity

pytestmark = [pytest.mark.live, pytest.mark.slow]

README = ROOT / "README.md"
README_URL = "ws://127.0.0.1:8765"
SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```python\n(.*?)\n```\n", re.S)
REGISTERED = r"agent classifier-1 registered at ws://127\.0\.0\.1:\d+ \(key (ed25519:\S+);"


def readme_snippets() -> dict[str, str]:
    return {m.group(1): m.group(2) + "\n" for m in SNIPPET.finditer(README.read_text())}


def test_the_readme_states_the_snippets_line_counts_honestly() -> None:
    text = README.read_text()
    snippets = readme_snippets()
    assert set(snippets) == {"agent", "controller"}
    for name, label in (("agent", "An agent"), ("controller", "A controller")):
        stated = re.search(rf"{label} \((\d+) lines", text)
        assert stated is not None, f"README does not say how long the {name} snippet is"
        assert int(stated.group(1)) == len(snippets[name].splitlines()), name
        assert README_URL in snippets[name]


def _controller_output(procs: Callable[..., Proc], script: Path) -> str:
    ctl = procs(str(script))
    try:
        code = ctl.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the controller snippet did not finish:\n" + ctl.output()) from None
    ctl._reader.join(timeout=5)
    assert code == 0, ctl.output()
    return ctl.output()


def test_readme_snippets_run_against_a_router_and_the_agent_restarts_under_its_id(procs: Callable[..., Proc], tmp_path: Path) -> None:
    router = procs("-m", "aicp.server", "--port", "0")
    url = router_url(router)
    snippets = readme_snippets()
    agent_py = tmp_path / "agent.py"
    agent_py.write_text(snippets["agent"].replace(README_URL, url))
    controller_py = tmp_path / "controller.py"
    controller_py.write_text(snippets["controller"].replace(README_URL, url))
    key_file = Path(KEY_DIR) / "classifier-1.key"  # the test processes run with AICP_KEY_DIR=KEY_DIR
    assert not key_file.exists()

    first = procs(str(agent_py))
    first_key = first.wait_for_line(REGISTERED, timeout=15).group(1)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Identity.load(key_file).public_key_text == first_key

    out = _controller_output(procs, controller_py)
    assert f"{{'label': 'positive'}} signed by classifier-1 {first_key}" in out

    first.kill(signal.SIGTERM)
    assert first.popen.wait(timeout=15) == 0, first.output()

    second = procs(str(agent_py))  # same id, the router still remembers its key
    assert second.wait_for_line(REGISTERED, timeout=15).group(1) == first_key
    out = _controller_output(procs, controller_py)
    assert f"signed by classifier-1 {first_key}" in out
    assert second.popen.poll() is None and "key-mismatch" not in second.output()
    second.kill(signal.SIGTERM)
    assert second.popen.wait(timeout=15) == 0, second.output()
