"""Running a coroutine on the best event loop available (uvloop when installed)."""

from __future__ import annotations

import asyncio
from typing import Any


def run_async(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
