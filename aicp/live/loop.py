"""Running a coroutine on the best event loop available (uvloop when installed)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

#: ``gc.set_threshold`` for processes that hold thousands of connections (see ``tune_gc``).
MANY_CONNECTIONS_GC_THRESHOLD = (700, 10, 1000)


def tune_gc() -> None:
    """Make full garbage collections rare in a process holding thousands of long-lived connections.

    A full (generation 2) collection walks every live object. A router holding 10,000
    agents' connections has millions, so each took about 300 ms of CPU, a pause of the
    whole loop, and CPython ran 9 of them while 10,000 agents registered: a fifth of the
    router's CPU (measured with ``aicp bench-fleet``). Young collections keep their
    defaults (short pauses); a full one is considered after 1,000 generation-1
    collections instead of 10, and CPython still requires the long-lived objects to have
    grown by a quarter since the last one. Cycles that reach generation 2 are freed later.
    """
    gc.set_threshold(*MANY_CONNECTIONS_GC_THRESHOLD)


def run_async(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
