"""Running a coroutine on the best event loop available (uvloop when installed), and a deadline timer for a sans-I/O core."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
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


class DeadlineTimer:
    """One event-loop timer armed for a core's next deadline (wall-clock ``time.time()`` seconds), as drivers need it.

    ``arm(deadline)`` keeps a timer already armed for an earlier deadline: calling the core's
    ``on_timer`` before anything is due is harmless (it runs what is due: nothing), and the
    next deadline moves later on nearly every event, so a timer is not cancelled and made
    again per event; the callback re-arms for the deadline of then. 1 ms slack: loop time
    and wall time drift apart by microseconds, and a timer that fires before its deadline is
    a wasted wake-up. ``loop`` None (not started, or stopped) arms nothing. O(1) per call.
    """

    __slots__ = ("_handle", "at", "fire", "loop")

    def __init__(self, fire: Callable[[], None]) -> None:
        self.fire = fire  # called when the timer fires (after ``at`` is cleared), with no arguments
        self.loop: asyncio.AbstractEventLoop | None = None
        self.at: float | None = None  # the deadline armed for, or None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, deadline: float | None) -> None:
        """Arm for ``deadline`` (None: nothing due) unless the armed timer fires no later."""
        armed = self.at
        if deadline == armed or (armed is not None and (deadline is None or armed <= deadline)):
            return
        self.cancel()
        self.at = deadline
        if deadline is None or self.loop is None:
            return
        self._handle = self.loop.call_at(self.loop.time() + max(0.0, deadline - time.time()) + 0.001, self._fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = None

    def _fired(self) -> None:
        self._handle = None
        self.at = None
        self.fire()
