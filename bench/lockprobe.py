"""How long a writer waits for SQLite's write lock while the relay works, waiting for it
as the relay's own writers do (relay.outbox.sqlite.begin_immediate): the worst wait seen
is what a webhook arriving at that moment would have waited before it could be stored."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from relay.outbox.sqlite import begin_immediate

#: How often the probe takes (and at once gives back) the write lock, and how long it
#: may wait for it at most.
PROBE_EVERY_SECONDS = 0.02
PATIENCE_MS = 120_000


class LockProbe:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="bench-lock-probe", daemon=True)
        self.worst = 0.0
        self.probes = 0

    def __enter__(self) -> LockProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _probe(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            while not self._stop.wait(PROBE_EVERY_SECONDS):
                started = time.perf_counter()
                begin_immediate(conn, PATIENCE_MS)
                waited = time.perf_counter() - started
                conn.execute("ROLLBACK")
                self.worst = max(self.worst, waited)
                self.probes += 1
        finally:
            conn.close()

    def figures(self) -> dict[str, float]:
        return {"worst_write_lock_wait_ms": round(self.worst * 1000, 1), "lock_probes": self.probes}
