"""Which body each Idempotency-Key was first used with, kept on disk so a restart still refuses a conflict.

After a restart the router answers a repeated key with its stored outcome, but that
outcome does not show the request body, so without this file a reused key with a
different body would get the first outcome instead of ``422 idempotency-conflict``.
One line per key (``TASK_ID HEX_DIGEST``), appended when a keyed task is accepted
(no fsync: it survives a crash of the gateway, not of the machine). Loaded once at
start; rewritten with the newest ``max_entries`` when it grows past twice that.
Lookup and record are O(1) (a rewrite is O(max_entries), once per max_entries records).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("aicp.gateway.journal")


class IdempotencyJournal:
    def __init__(self, path: str | Path | None, max_entries: int = 100_000) -> None:
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self._digests: OrderedDict[str, bytes] = OrderedDict()
        self._lines = 0
        if self.path is not None and self.path.exists():
            for line in self.path.read_text("ascii", errors="replace").splitlines():
                task_id, _, digest = line.partition(" ")
                try:
                    self._remember(task_id, bytes.fromhex(digest))
                except ValueError:
                    continue  # a torn last line after a crash
                self._lines += 1

    def _remember(self, task_id: str, digest: bytes) -> None:
        self._digests[task_id] = digest
        self._digests.move_to_end(task_id)
        while len(self._digests) > self.max_entries:
            self._digests.popitem(last=False)

    def digest_of(self, task_id: str) -> bytes | None:
        return self._digests.get(task_id)

    def record(self, task_id: str, digest: bytes) -> None:
        self._remember(task_id, digest)
        if self.path is None:
            return
        try:
            if self._lines >= 2 * self.max_entries:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(f"{t} {d.hex()}\n" for t, d in self._digests.items()), "ascii")
                os.replace(tmp, self.path)
                self._lines = len(self._digests)
            else:
                with open(self.path, "a", encoding="ascii") as f:
                    f.write(f"{task_id} {digest.hex()}\n")
                self._lines += 1
        except OSError as exc:  # the key still works in memory; only a restart would miss it
            log.warning("idempotency journal %s: %s", self.path, exc)
