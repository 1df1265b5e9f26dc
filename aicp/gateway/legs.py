"""Per-task timestamps of the gateway's critical path, for ``python -m aicp.lab.bench.gateway_legs`` (off unless asked).

With ``AICP_GATEWAY_LEGS=FILE`` in its environment, ``aicp gateway`` notes for every
task it submits five ``time.perf_counter()`` readings (CLOCK_MONOTONIC on Linux, so
comparable with the load generator's on the same machine): its bytes read (``data_received``,
``LegsHttpToolsProtocol``, used only then), its ``POST /tasks`` parsed (``on_message_complete``), its task frame handed to the link (``send_soon``),
its result frame received (``GatewayLink._frame``), and its HTTP answer written. They
are written to FILE (JSON) when the process exits. Without the variable ``LEGS`` is
None and each point costs one global lookup and a comparison. O(1) per point; the
rows are kept in memory, so it is for bounded lab runs only.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from typing import Final


class Legs:
    """The noted times: ``rows[task_id] = [bytes in, parsed, frame out, frame written at once (1/0), result in, answer out]``. O(1) per point."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[str, list[float]] = {}
        self.arrived = 0.0  # the last bytes read from an HTTP connection, before parsing (``LegsHttpToolsProtocol``)
        self.parsed = 0.0  # the last request parsed: its task's frame is handed over in the same callback
        self.result_in = 0.0  # the last frame received: its task's answer is written in the same callback
        atexit.register(self.dump)

    def frame_out(self, task_id: str, at_once: bool) -> None:
        self.rows[task_id] = [self.arrived, self.parsed, time.perf_counter(), 1.0 if at_once else 0.0, 0.0, 0.0]

    def answered(self, task_id: str) -> None:
        row = self.rows.get(task_id)
        if row is not None:
            row[4] = self.result_in
            row[5] = time.perf_counter()

    def dump(self) -> None:
        with open(self.path, "w") as f:
            json.dump(self.rows, f)


LEGS: Final = Legs(os.environ["AICP_GATEWAY_LEGS"]) if os.environ.get("AICP_GATEWAY_LEGS") else None
