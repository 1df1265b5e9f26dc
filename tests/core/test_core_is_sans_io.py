"""The core never imports asyncio, websockets, simpy, time or socket, directly or through another module.

Checked two ways: the import statements of each core module (static), and a fresh
interpreter that imports the whole core and lists which forbidden modules got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = ["errors", "messages", "signing", "replay", "fenwick", "registry", "strategies", "router", "protocol", "peer", "inprocess"]
FORBIDDEN = {"asyncio", "websockets", "simpy", "time", "socket", "selectors", "threading"}
AICP = Path(__file__).resolve().parents[2] / "aicp"


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_forbidden(module: str) -> None:
    tree = ast.parse((AICP / f"{module}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"aicp/{module}.py imports {sorted(imported & FORBIDDEN)}"


def test_importing_the_core_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import {', '.join('aicp.' + m for m in CORE)}\n"
        f"print(sorted((set(sys.modules) - before) & set({sorted(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # 'time' may already be imported by the interpreter itself; what matters is what the core pulls in
    assert out == "[]", f"importing the core loaded {out}"
