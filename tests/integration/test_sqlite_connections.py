"""The SQLite outbox's per-thread connections under storage faults, made deterministic.

`SQLiteBackend` opens one connection per thread, lazily. Two defects, found by the
storage-fault suite (tests/e2e/test_storage_faults.py), are pinned here:

- SQLite silently opens a file it may not write (here `chattr +i`) read-only; such a
  connection, once kept, refused every write after the fault had cleared, until the
  process restarted.
- The connections of threads that had ended were never closed: two file descriptors
  leaked per ended thread (anyio's worker pool retires idle threads and starts new ones).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.core.errors import StoreUnavailable
from relay.outbox import NewDelivery
from relay.outbox.sqlite import WAL_LIMIT_BYTES, SQLiteBackend


def delivery(call_id: str) -> NewDelivery:
    return NewDelivery("vapi", "end-of-call-report", call_id, f"end-of-call-report:{call_id}", b"{}", time.time())


def open_descriptors(path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(path)
    return count


def test_a_connection_opened_while_read_only_recovers_once_writable(tmp_path):
    path = str(tmp_path / "relay.db")
    backend = SQLiteBackend(path)
    backend.migrate()
    backend.insert_many([delivery("before")], time.time())
    # One worker thread, like one of anyio's: it opens its connection during the fault.
    worker = ThreadPoolExecutor(1)
    made = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable (needs root and chattr): {made.stderr.strip()}")
    try:
        with pytest.raises(StoreUnavailable, match="readonly"):
            worker.submit(backend.insert_many, [delivery("during")], time.time()).result()
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
    results = []
    for _ in range(2):  # at most one more refusal, then the thread must write again
        try:
            results.append(worker.submit(backend.insert_many, [delivery("after")], time.time()).result())
            break
        except StoreUnavailable as error:
            results.append(error)
    worker.shutdown()
    backend.close()
    assert not isinstance(results[-1], StoreUnavailable), results


def test_connections_of_ended_threads_are_closed(tmp_path):
    path = str(tmp_path / "relay.db")
    backend = SQLiteBackend(path)
    backend.migrate()
    baseline = open_descriptors(path)
    for _ in range(30):  # thirty short-lived worker threads, one after another
        thread = threading.Thread(target=backend.ping)
        thread.start()
        thread.join()
    leaked = open_descriptors(path) - baseline
    backend.close()
    # A live thread or two may keep theirs; thirty ended ones must not.
    assert leaked <= 6, f"{leaked} descriptors still open for ended threads"


def test_the_wal_does_not_keep_the_size_of_a_burst_of_large_reports(tmp_path):
    backend = SQLiteBackend(str(tmp_path / "relay.db"))
    backend.migrate()
    body = b"x" * (8 * 1024 * 1024)
    # One group commit, as twenty reports arriving together are stored.
    backend.insert_many([NewDelivery("vapi", "end-of-call-report", f"big-{n}", f"end-of-call-report:big-{n}",
                                     body, time.time()) for n in range(20)], time.time())
    wal = os.stat(tmp_path / "relay.db-wal").st_size
    assert wal <= WAL_LIMIT_BYTES, f"WAL at {wal / 1e6:.0f} MB after 160 MB of reports"
    assert backend.get(20).body == body
    backend.close()
