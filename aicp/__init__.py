"""AICP: signed, real-time agent-to-agent messaging.

Layers, each a folder (``ls aicp``):

* the sans-I/O core, flat in ``aicp/``: ``messages``, ``signing``, ``replay``,
  ``ratelimit``, ``registry``, ``strategies``, ``router``, ``protocol``, ``peer``,
  ``errors``, ``inprocess`` (an in-memory driver for tests) and ``vectors``. It does
  no I/O and reads no clock: every entry point takes ``now``;
* ``aicp.live``: the asyncio drivers (router, agent client, controller), and the
  Python API built on them: ``Agent``, ``Controller``, ``TaskResult``;
* ``aicp.sim``: the same core under SimPy (``[sim]`` extra);
* ``aicp.lab``: benchmarks, plots, data generation and the demo (``[lab]`` extra);
* ``aicp.cli``: the ``aicp`` command.

The public names below are imported lazily, so ``import aicp.router`` never loads
the live drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> module that defines it
_EXPORTS = {
    "Identity": "aicp.signing",
    "Agent": "aicp.live.agent",
    "Controller": "aicp.live.controller",
    "TaskResult": "aicp.live.controller",
    "TaskError": "aicp.errors",
    "AICPController": "aicp.live.controller",
    "AICPWebSocketClient": "aicp.live.client",
    "AICPWebSocketServer": "aicp.live.server",
}

__all__ = ["AICPController", "AICPWebSocketClient", "AICPWebSocketServer", "Agent", "Controller", "Identity", "TaskError", "TaskResult"]

if TYPE_CHECKING:
    from aicp.errors import TaskError
    from aicp.live.agent import Agent
    from aicp.live.client import AICPWebSocketClient
    from aicp.live.controller import AICPController, Controller, TaskResult
    from aicp.live.server import AICPWebSocketServer
    from aicp.signing import Identity


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aicp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
