"""The layers of ``aicp/`` import only downwards, and the core does no I/O.

``ls aicp`` shows the layers: the sans-I/O core is every module directly in
``aicp/``; ``live/`` (asyncio drivers) and ``sim/`` (the SimPy driver) build on it;
``lab/`` (benchmarks, plots, data, demo) uses both; ``cli/`` sits on top. The rules
are checked over whole folders, so a new module is covered the day it is added:

* the core imports no I/O module (asyncio, websockets, simpy, nats, time, socket, …)
  and no other layer;
* ``live`` and ``sim`` never import each other, ``gateway``, ``lab`` or ``cli``;
* ``gateway`` (the HTTP and A2A front door) builds on the core and ``live``, never on ``sim``, ``lab`` or ``cli``;
* ``lab`` never imports ``cli``.

Checked statically (every import statement, relative ones resolved) and at run
time (a fresh interpreter imports the whole core and lists what got loaded).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

AICP = Path(__file__).resolve().parents[2] / "aicp"
#: entry points kept at the top under their historical names; they only forward to ``aicp.cli``
ENTRY_POINTS = {"__main__.py", "server.py"}
IO_MODULES = {"asyncio", "websockets", "simpy", "nats", "uvloop", "time", "socket", "selectors", "threading", "subprocess", "sqlite3"}
LAYERS = ("live", "sim", "gateway", "lab", "cli")
#: layer -> the aicp layers it must not import
FORBIDDEN_LAYERS = {
    "core": set(LAYERS),
    "live": {"sim", "gateway", "lab", "cli"},
    "sim": {"live", "gateway", "lab", "cli"},
    "gateway": {"sim", "lab", "cli"},
    "lab": {"cli"},
}


def core_modules() -> list[str]:
    return sorted(p.stem for p in AICP.glob("*.py") if p.name not in ENTRY_POINTS and p.name != "__init__.py")


def layer_files(layer: str) -> list[Path]:
    if layer == "core":  # aicp/__init__.py names the live classes lazily; the run-time test covers it
        return sorted(p for p in AICP.glob("*.py") if p.name not in ENTRY_POINTS and p.name != "__init__.py")
    return sorted((AICP / layer).rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """Fully qualified names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(AICP.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from aicp import sim` imports aicp.sim
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "aicp":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def test_the_folders_hold_every_layer() -> None:
    assert set(core_modules()) >= {"errors", "messages", "signing", "replay", "ratelimit", "registry", "strategies", "router", "protocol", "peer"}
    for layer in LAYERS:
        assert (AICP / layer / "__init__.py").is_file(), f"aicp/{layer}/ is not a package"


@pytest.mark.parametrize("path", layer_files("core"), ids=lambda p: p.name)
def test_core_module_imports_no_io_and_no_layer_above(path: Path) -> None:
    imported = imports_of(path)
    io = {n for n in imported if n.split(".")[0] in IO_MODULES}
    assert not io, f"aicp/{path.name} imports {sorted(io)}"
    above = {n for n in imported if layer_of(n) in FORBIDDEN_LAYERS["core"]}
    assert not above, f"aicp/{path.name} imports {sorted(above)}"


@pytest.mark.parametrize("layer", ["live", "sim", "gateway", "lab"])
def test_layers_import_only_downwards(layer: str) -> None:
    bad = []
    for path in layer_files(layer):
        for name in imports_of(path):
            if layer_of(name) in FORBIDDEN_LAYERS[layer]:
                bad.append(f"{path.relative_to(AICP.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_simulator_does_no_socket_io() -> None:
    for path in layer_files("sim"):
        io = {n for n in imports_of(path) if n.split(".")[0] in {"asyncio", "websockets", "socket", "nats"}}
        assert not io, f"{path.relative_to(AICP.parent)} imports {sorted(io)}"


def test_entry_points_only_forward_to_the_command_line() -> None:
    for name in ENTRY_POINTS:
        imported = imports_of(AICP / name)
        assert imported and all(n.startswith("aicp.cli") or n == "__future__" or n.startswith("__future__.") for n in imported), f"aicp/{name} imports {sorted(imported)}"


def test_importing_the_core_loads_no_io_module_and_no_other_layer() -> None:
    watched = sorted(IO_MODULES | {f"aicp.{layer}" for layer in LAYERS})
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import {', '.join('aicp.' + m for m in core_modules())}\n"
        "import aicp\n"
        "aicp.Identity\n"  # a public name of the core, resolved through aicp/__init__.py
        f"print(sorted((set(sys.modules) - before) & set({watched!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    # 'time' may already be imported by the interpreter itself; what matters is what the core pulls in
    assert out == "[]", f"importing the core loaded {out}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The static check is not vacuous: it resolves relative imports and `from aicp import sim`."""
    probe = AICP / "live" / "_probe_for_test.py"
    probe.write_text("from .. import sim\nfrom aicp import lab\nimport time\n")
    try:
        found = imports_of(probe)
    finally:
        probe.unlink()
    assert {"aicp.sim", "aicp.lab", "time"} <= found
    assert layer_of("aicp.sim") == "sim" and layer_of("aicp.router") == "core" and layer_of("numpy") is None
