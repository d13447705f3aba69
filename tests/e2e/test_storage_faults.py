"""Storage faults under a running `relay serve`: disk full, database locked, file read-only.

While the fault lasts, every webhook is answered 503 with Retry-After (an ErrorResponse)
or, if the store could still take it, 200 and then it must really be stored: never a
2xx for data the relay does not hold, never a 500. Once the fault clears, the same
process accepts webhooks again by itself, and everything acknowledged is delivered.

Faults are real: a small tmpfs filled to the last byte, a second SQLite connection
holding BEGIN EXCLUSIVE, an immutable (chattr +i) database file. Mounting needs root
(CI runs as root); without it those tests skip and say why.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from relay.http.ingest import STORE_WAIT_SECONDS
from tests.e2e.conftest import rows
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

WAIT = 30  # upper bound on any wait; never slept
BURSTS = 3  # rounds of concurrent requests in the read-only test, each followed by webhooks
ERROR_KEYS = {"error_type", "error_code", "message", "request_id"}


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of `size` at `path`; the test skips if mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root, as in CI): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: the relay (killed by the fixture afterwards) may still hold files here.
        run("umount", "-l", str(path))


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    made = run("chattr", "+i", str(path))
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable (needs root and chattr): {made.stderr.strip()}")
    try:
        yield
    finally:
        run("chattr", "-i", str(path))


class Webhooks:
    """Sends distinct signed webhooks and checks each answer against the storage promise."""

    def __init__(self, relay, scan, pad: int = 0) -> None:
        self.relay, self.scan, self.pad = relay, scan, pad
        self.acked: dict[str, str] = {}  # call id -> provider
        self.refused: dict[str, str] = {}
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def body(self, provider: str, call_id: str) -> bytes:
        name = "vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended"
        document = json.loads(with_call_id(name, call_id))
        if self.pad:  # a long transcript, so the store must grow to take it
            target = document["message"] if provider == "vapi" else document["call"]
            target["transcript"] = "x" * self.pad
        return json.dumps(document).encode()

    def send(self, call_id: str) -> int:
        provider = "vapi" if hash(call_id) % 2 else "retell"
        body = self.body(provider, call_id)
        headers = vapi_headers() if provider == "vapi" else retell_headers(body)
        self.scan.forbid_headers(headers)
        started = time.monotonic()
        response = httpx.post(f"{self.relay.url}/webhooks/{provider}", content=body, headers=headers,
                              timeout=WAIT)
        elapsed = time.monotonic() - started
        self.scan.served(response)
        status = response.status_code
        # An answer, refusal included, must come before providers give up on the request.
        assert elapsed < STORE_WAIT_SECONDS + 2, f"{status} took {elapsed:.1f} s"
        assert status in (200, 503), f"{status}: {response.text[:300]}"
        if status == 503:
            document = response.json()
            assert document.keys() >= ERROR_KEYS and document["error_code"] == "store_unavailable", document
            assert int(response.headers["retry-after"]) > 0
        else:
            assert response.json()["data"]["status"] in ("accepted", "duplicate")
        with self._lock:
            self.statuses.append(status)
            (self.acked if status == 200 else self.refused)[call_id] = provider
            if status == 200:
                self.refused.pop(call_id, None)
        return status

    def send_many(self, call_ids: list[str], parallel: int = 4) -> list[int]:
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(self.send, call_ids))

    def retry_refused(self, within: float = WAIT) -> None:
        """What a provider does after a 503: send again until it is acknowledged."""
        for call_id in list(self.refused):
            eventually(lambda call_id=call_id: self.send(call_id) == 200, within, interval=0.2,
                       message=f"{call_id} still refused after the fault cleared")

    def all_stored_and_delivered(self, env, fake_roark) -> None:
        def settled():
            stored = {r["call_id"]: r for r in rows(env)}
            return stored if all(c in stored and stored[c]["state"] == "delivered" for c in self.acked) else None

        stored = eventually(settled, WAIT, interval=0.1,
                            message=f"acknowledged webhooks not all delivered: "
                                    f"{[(r['call_id'], r['state']) for r in rows(env)]}")
        assert len(stored) == len(rows(env))  # one row per call
        forwarded = set()
        for request in fake_roark.accepted():
            payload = request.json.get("vapi_end_of_call_report_payload") or request.json["retell_call_ended_payload"]
            forwarded.add(payload["call"].get("id") or payload["call"].get("call_id"))
        assert set(self.acked) <= forwarded


def start(start_relay, relay_env, database: Path, **extra: str):
    env = {**relay_env, "RELAY_DATABASE_URL": f"sqlite:///{database}", **extra}
    return env, start_relay(env)


def test_disk_full_answers_503_and_recovers_without_restart(start_relay, relay_env, fake_roark, tmp_path,
                                                             secret_scan):
    with tmpfs(tmp_path / "small", "16m") as disk:
        env, relay = start(start_relay, relay_env, disk / "relay.db")
        secret_scan.logged(tmp_path / "relay.log")
        hooks = Webhooks(relay, secret_scan, pad=200_000)
        assert hooks.send("before-full") == 200
        filler = disk / "filler"
        with open(filler, "wb") as f:  # fill every last block (bounded by the 16 MiB size)
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        with contextlib.suppress(OSError), open(disk / "filler2", "wb") as f:  # and the last partial chunk
            while True:
                f.write(b"\0" * 512)
                f.flush()

        during = hooks.send_many([f"full-{i}" for i in range(12)])
        assert 503 in during, f"the full disk never refused a write: {during}"
        assert relay.process.poll() is None
        assert httpx.get(f"{relay.url}/health", timeout=WAIT).status_code in (200, 503)

        filler.unlink()
        (disk / "filler2").unlink()
        hooks.retry_refused()
        assert all(hooks.send(f"after-full-{i}") == 200 for i in range(3))
        assert relay.process.poll() is None  # the same process: no restart
        hooks.all_stored_and_delivered(env, fake_roark)


def test_locked_database_answers_503_and_recovers_without_restart(start_relay, relay_env, fake_roark, tmp_path,
                                                                  secret_scan):
    import sqlite3

    env, relay = start(start_relay, relay_env, tmp_path / "relay.db")
    secret_scan.logged(tmp_path / "relay.log")
    hooks = Webhooks(relay, secret_scan)
    assert hooks.send("before-lock") == 200
    fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    blocker = sqlite3.connect(tmp_path / "relay.db", isolation_level=None, timeout=WAIT)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        during = hooks.send_many([f"locked-{i}" for i in range(6)], parallel=6)
        assert during == [503] * 6, during
        assert hooks.send("before-lock") == 503  # even a duplicate: its lookup needs the lock
        health = httpx.get(f"{relay.url}/health", timeout=WAIT)
        assert health.status_code == 200  # WAL readers are not blocked
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    hooks.retry_refused()
    assert hooks.send("after-lock") == 200
    assert relay.process.poll() is None
    hooks.all_stored_and_delivered(env, fake_roark)


def test_read_only_database_file_never_gets_a_false_2xx_and_recovers(start_relay, relay_env, fake_roark,
                                                                     tmp_path, secret_scan, record_property):
    # A file made read-only (chattr +i) under a running relay is read-only only to new
    # opens: a connection opened before keeps its write access, so a webhook it stores is
    # truly stored and its 200 is honest. Bursts of concurrent requests make the relay
    # open connections on new threads while the fault lasts (with anyio's worker pool,
    # as at HEAD, writes then land on read-only connections and are refused; with a
    # dedicated writer thread they keep succeeding). Either way: no 2xx for anything not
    # stored, no 500, a prompt 503 with Retry-After, and afterwards every webhook taken
    # again by the same process. The connection-level defect behind "afterwards" is
    # pinned deterministically in tests/integration/test_sqlite_connections.py.
    with tmpfs(tmp_path / "ro", "16m") as disk:
        database = disk / "relay.db"
        env, relay = start(start_relay, relay_env, database)
        secret_scan.logged(tmp_path / "relay.log")
        hooks = Webhooks(relay, secret_scan)
        assert hooks.send("before-ro") == 200
        during: list[int] = []
        with immutable(database):
            with ThreadPoolExecutor(48) as pool:
                for burst in range(BURSTS):
                    healths = list(pool.map(
                        lambda _: httpx.get(f"{relay.url}/health", timeout=WAIT).status_code, range(64)))
                    assert set(healths) <= {200, 503}
                    during += [hooks.send(f"ro-{burst}-{i}") for i in range(3)]
            assert relay.process.poll() is None
        record_property("read_only_refused", during.count(503))
        record_property("read_only_stored", during.count(200))
        hooks.retry_refused(within=5)  # a relay that recovers does so at once
        after = [hooks.send(f"after-ro-{i}") for i in range(12)]
        assert after == [200] * 12, f"still refusing after the fault cleared: {after}"
        assert relay.process.poll() is None
        hooks.all_stored_and_delivered(env, fake_roark)
