"""The drivers' one timer for a core's next deadline (aicp.live.loop.DeadlineTimer): kept when the deadline moves later."""

from __future__ import annotations

import asyncio
import time

from aicp.live.loop import DeadlineTimer


def test_an_earlier_deadline_rearms_a_later_one_is_kept_and_a_firing_clears_it() -> None:
    async def go() -> None:
        fired: list[float | None] = []
        timer = DeadlineTimer(lambda: fired.append(timer.at))
        timer.arm(time.time() + 0.01)  # no loop yet: nothing armed, but the deadline is noted
        assert not timer.armed
        timer.cancel()
        timer.loop = asyncio.get_running_loop()
        now = time.time()
        timer.arm(now + 0.2)
        assert timer.armed and timer.at == now + 0.2
        timer.arm(now + 0.5)  # later: the armed timer is kept (firing early is the core's no-op)
        timer.arm(None)  # nothing due: kept too
        assert timer.at == now + 0.2
        timer.arm(now + 0.02)  # earlier: re-armed
        assert timer.at == now + 0.02
        await asyncio.sleep(0.1)  # a timer of its own, due after the one armed: the armed one fires first
        assert fired == [None] and timer.at is None and not timer.armed  # cleared before the callback runs
        timer.arm(time.time() + 5.0)
        timer.cancel()
        assert not timer.armed and timer.at is None
        await asyncio.sleep(0.01)
        assert fired == [None]

    asyncio.run(go())
