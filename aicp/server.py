"""``python -m aicp.server``: the router's entry point under the original design's name.

The router itself is ``aicp.live.server.AICPWebSocketServer``; its command line is
``aicp.cli.serve``. This module only forwards to it, so that importing the core
never imports the live drivers.
"""

from __future__ import annotations

if __name__ == "__main__":
    from aicp.cli.serve import main

    raise SystemExit(main())
