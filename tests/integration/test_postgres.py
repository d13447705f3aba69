"""What only the PostgreSQL outbox does: several instances on one database, NOTIFY
wake-ups, and riding out a database outage. The shared contract is test_outbox.py.

Each test runs in a fresh schema of the server named by RELAY_TEST_POSTGRES_URL (.ci/run
starts one); without it they skip, and in CI (RELAY_TEST_REQUIRE_SERVICES=1) they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import psycopg
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from relay.cli import main
from relay.core.errors import StoreUnavailable
from relay.http.app import create_app
from relay.outbox import AsyncOutbox, DeliveryFilter, NewDelivery, State, migrations, postgres
from relay.outbox.postgres import FAIL_FAST_SECONDS, PostgresBackend
from relay.outbox.startup import migrate_when_available, migrate_when_available_async
from relay.settings import Settings
from relay.testing.roark_contract import load_contract
from relay.web.requests import STORE_RETRY_AFTER_SECONDS
from tests.helpers import eventually, free_port, retell_headers, vapi_headers, with_call_id
from tests.secret_scan import captured_relay_logs

NOW = 1_700_000_000.0
WAIT = 15  # seconds; upper bounds on conditions, never slept


def via_port(url: str, port: int) -> str:
    """`url` pointing at 127.0.0.1:`port` instead (a proxy in front of the server)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}" if credentials
                                     else f"127.0.0.1:{port}"))


@pytest.fixture
def pg_url(postgres_schema_url) -> str:
    return postgres_schema_url


@pytest.fixture
def store(pg_url) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(pg_url)
    backend.migrate()
    yield backend
    backend.close()


class TcpProxy:
    """A loopback TCP forwarder between the relay and PostgreSQL that a test can cut
    (every connection dropped, new ones closed at once, as if the server were gone) and
    restore."""

    def __init__(self, target_url: str, port: int = 0) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.1)  # lets the accept loop notice close()
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def url(self, url: str) -> str:
        return via_port(url, self.port)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:  # one side gone: take the other down too, as a dead server would
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._sockets.discard(source)
            source.close()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join()
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def server_appearing(target_url: str, after: float) -> Iterator[str]:
    """A URL where nothing listens until, `after` seconds on, a proxy to the server does
    (a database still booting)."""
    port = free_port()
    proxies: list[TcpProxy] = []
    timer = threading.Timer(after, lambda: proxies.append(TcpProxy(target_url, port)))
    timer.start()
    try:
        yield via_port(target_url, port)
    finally:
        timer.cancel()
        timer.join()
        for proxy in proxies:
            proxy.close()


class Wakes:
    """Counts listen() callbacks; tests wait for a count instead of sleeping."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def __call__(self) -> None:
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count >= count, timeout), (
                f"listen() callback ran {self.count} time(s), expected {count} within {timeout} s")


def new(call_id: str) -> NewDelivery:
    return NewDelivery("retell", "call_ended", call_id, f"call_ended:{call_id}", b"{}", NOW)


def start(env: dict) -> TestClient:
    return TestClient(create_app(Settings.from_env(env)), raise_server_exceptions=False)


def send_vapi(client: TestClient, call_id: str):
    body = with_call_id("vapi/end-of-call-report", call_id)
    return client.post("/webhooks/vapi", content=body, headers=vapi_headers())


# --- without a server -------------------------------------------------------------------


def test_unreachable_server_is_store_unavailable_and_the_password_stays_out():
    store = PostgresBackend(f"postgresql://relay:pa55-w0rd@127.0.0.1:{free_port()}/relay",
                            pool_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            store.insert_many([new("x")], NOW)
        assert "pa55-w0rd" not in str(raised.value)
    finally:
        store.close()


def test_malformed_url_is_store_unavailable_without_quoting_it():
    store = PostgresBackend("postgresql://relay:s3cr%zzet@127.0.0.1:5432/relay")
    with pytest.raises(StoreUnavailable) as raised:
        store.migrate()
    assert "s3cr" not in str(raised.value) and "not a valid connection URI" in str(raised.value)


# --- on a server --------------------------------------------------------------------------


def test_the_app_stores_and_forwards_on_postgres(pg_url, relay_env, fake_roark):
    env = {**relay_env, "RELAY_DATABASE_URL": pg_url}
    with start(env) as client:
        first = send_vapi(client, "pg-call").json()["data"]
        again = send_vapi(client, "pg-call").json()["data"]
        retell = with_call_id("retell/call_ended", "pg-retell")
        stored = client.post("/webhooks/retell", content=retell, headers=retell_headers(retell))
        assert first["status"] == "accepted" and stored.json()["data"]["status"] == "accepted"
        assert again == {**first, "status": "duplicate"}
        health = client.get("/health").json()["data"]
        assert health["status"] == "healthy" and health["dependencies"]["database"] == "healthy"
        fake_roark.wait_for(lambda rs: len(rs) >= 2, WAIT)
        reader = PostgresBackend(pg_url)
        try:
            def delivered():
                return [d for d in reader.list_deliveries(DeliveryFilter(), None, 10)
                        if d.state is State.DELIVERED and d.roark_call_id]

            assert len(eventually(lambda: len(delivered()) == 2 and delivered(), WAIT)) == 2
            assert reader.get(first["delivery_id"]).body == with_call_id("vapi/end-of-call-report", "pg-call")
        finally:
            reader.close()
    assert sorted(r.path for r in fake_roark.requests) == ["/v1/retell/call", "/v1/vapi/call"]
    assert all(r.status == 201 and not r.problems for r in fake_roark.requests)


def test_work_stored_by_another_instance_is_forwarded_without_waiting_for_a_poll(
    pg_url, relay_env, fake_roark, store
):
    env = {**relay_env, "RELAY_DATABASE_URL": pg_url, "RELAY_POLL_INTERVAL_SECONDS": "600"}
    with start(env):
        body = with_call_id("retell/call_ended", "from-elsewhere")
        store.insert_many([NewDelivery("retell", "call_ended", "from-elsewhere",
                                       "call_ended:from-elsewhere", body, NOW)], NOW)
        [request] = fake_roark.wait_for(lambda rs: len(rs) >= 1, WAIT)
    assert request.json["retell_call_ended_payload"] == json.loads(body)


def test_concurrent_migrations_apply_each_version_once(pg_url):
    # Separate backends are separate sessions, which is all the server sees of several
    # processes starting together; the barrier makes them really collide.
    stores = [PostgresBackend(pg_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def migrate(store: PostgresBackend) -> int:
        barrier.wait()
        return store.migrate()

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            versions = list(pool.map(migrate, stores))
        latest = migrations.load("postgres")[-1].version
        assert versions == [latest] * len(stores)
        with psycopg.connect(pg_url) as conn:
            applied = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
        assert applied == [(m.version, m.name) for m in migrations.load("postgres")]
    finally:
        for store in stores:
            store.close()


def test_the_same_webhook_stored_at_once_by_two_instances_is_one_row(pg_url, store):
    other = PostgresBackend(pg_url)
    results: dict[str, list] = {}
    try:
        with psycopg.connect(pg_url) as gate:
            # Hold both inserts at the table lock, then let them go at the same moment.
            gate.execute("LOCK TABLE webhooks IN EXCLUSIVE MODE")
            threads = [threading.Thread(target=lambda name=name, backend=backend:
                                        results.__setitem__(name, backend.insert_many([new("same")], NOW)))
                       for name, backend in (("a", store), ("b", other))]
            for thread in threads:
                thread.start()
            eventually(lambda: gate.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = 'webhooks'::regclass AND NOT granted"
            ).fetchone()[0] == 2, WAIT, message="both inserts should be waiting on the lock")
        for thread in threads:
            thread.join(WAIT)
        [a], [b] = results["a"], results["b"]
        assert a.delivery_id == b.delivery_id and sorted([a.duplicate, b.duplicate]) == [False, True]
        assert store.counts()[State.PENDING] == 1
    finally:
        other.close()


def test_listen_wakes_on_an_insert_by_another_instance(pg_url, store):
    listener = PostgresBackend(pg_url)
    wakes = Wakes()
    unlisten = listener.listen(wakes)
    try:
        wakes.wait_for(1)  # listening (it wakes once on connecting)
        store.insert_many([new("a")], NOW)
        wakes.wait_for(2)
        store.insert_many([new("a")], NOW)  # a duplicate is no new work
        store.insert_many([new("b")], NOW)
        wakes.wait_for(3)
        assert wakes.count == 3
    finally:
        unlisten()
        listener.close()


def test_listen_reconnects_and_wakes_after_losing_its_connection(pg_url, store):
    with TcpProxy(pg_url) as proxy:
        listener = PostgresBackend(proxy.url(pg_url))
        wakes = Wakes()
        unlisten = listener.listen(wakes)
        try:
            wakes.wait_for(1)
            proxy.cut()  # its connection is gone, so it must reconnect...
            proxy.restore()
            wakes.wait_for(2)  # ...and then wakes, as work may have come meanwhile
            store.insert_many([new("after")], NOW)
            wakes.wait_for(3)
        finally:
            unlisten()
            listener.close()


def listening() -> int:
    """How many listen() threads are running."""
    return sum(t.name == "relay-outbox-listen" for t in threading.enumerate())


def test_unlisten_stops_the_thread_promptly(pg_url):
    before = listening()
    listener = PostgresBackend(pg_url)
    wakes = Wakes()
    unlisten = listener.listen(wakes)
    wakes.wait_for(1)
    assert listening() == before + 1
    unlisten()  # returns once the thread has ended
    assert listening() <= before
    listener.close()


def test_unlisten_interrupts_the_wait_to_listen_again(monkeypatch):
    monkeypatch.setattr(postgres, "LISTEN_BACKOFF_SECONDS", (60.0, 60.0))
    before = listening()
    listener = PostgresBackend(f"postgresql://relay@127.0.0.1:{free_port()}/relay")
    with captured_relay_logs() as logs:
        unlisten = listener.listen(Wakes())
        # logged just before it starts waiting a minute to try again
        eventually(lambda: "outbox_listen_lost" in logs.getvalue(), timeout=WAIT)
        started = time.monotonic()
        unlisten()
    assert time.monotonic() - started < 1 and listening() == before
    listener.close()


def test_relay_migrate_waits_for_a_database_that_is_still_starting(pg_url):
    with server_appearing(pg_url, after=1.0) as url:
        result = CliRunner(env={"ROARK_API_KEY": "rk", "RELAY_DATABASE_URL": url}).invoke(main, ["migrate"])
    assert result.exit_code == 0, result.output
    assert f"outbox schema at version {migrations.load('postgres')[-1].version}" in result.output


def test_the_relay_starts_once_its_database_is_up(pg_url, relay_env):
    with server_appearing(pg_url, after=1.0) as url, start({**relay_env, "RELAY_DATABASE_URL": url}) as client:
        assert client.get("/health").json()["data"]["dependencies"]["database"] == "healthy"


@pytest.mark.parametrize("flavour", ["blocking", "async"])
def test_start_up_gives_up_after_its_patience(flavour):
    backend = PostgresBackend(f"postgresql://relay@127.0.0.1:{free_port()}/relay", pool_timeout=0.2)
    started = time.monotonic()
    with captured_relay_logs() as logs, pytest.raises(StoreUnavailable, match=r"still unavailable after \d+ s"):
        if flavour == "blocking":
            migrate_when_available(backend, patience=1.5)
        else:
            asyncio.run(migrate_when_available_async(AsyncOutbox(backend), patience=1.5))
    # it waited between tries, and no try started after the patience ran out
    assert "outbox_unavailable_at_start" in logs.getvalue()
    assert time.monotonic() - started < 1.5 + 0.2 + FAIL_FAST_SECONDS
    backend.close()


def test_outage_answers_503_then_recovers_without_a_restart(pg_url, relay_env, fake_roark):
    error_schema = {**load_contract()["components"]["schemas"]["ErrorResponse"],
                    "components": load_contract()["components"]}
    with TcpProxy(pg_url) as proxy:
        env = {**relay_env, "RELAY_DATABASE_URL": proxy.url(pg_url)}
        with start(env) as client:
            assert send_vapi(client, "before").status_code == 200
            proxy.cut()
            for call_id in ("during-1", "during-2"):
                response = send_vapi(client, call_id)
                assert response.status_code == 503, response.text  # never a 2xx
                assert response.headers["retry-after"] == str(STORE_RETRY_AFTER_SECONDS)
                body = response.json()
                jsonschema.validate(body, error_schema)
                assert body["error_code"] == "store_unavailable"
                assert body["request_id"] == response.headers["x-request-id"]
                assert "relay:relay" not in response.text
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["data"]["dependencies"]["database"] == "unhealthy"
            proxy.restore()
            eventually(lambda: send_vapi(client, "after").status_code == 200, WAIT, interval=0.2,
                       message="ingest did not recover after the database came back")
            assert client.get("/health").status_code == 200
            def forwarded(rs):
                return {r.json["vapi_end_of_call_report_payload"]["call"]["id"] for r in rs if r.status == 201}

            fake_roark.wait_for(lambda rs: {"before", "after"} <= forwarded(rs), WAIT)
    reader = PostgresBackend(pg_url)
    try:
        stored = sorted(d.call_id for d in reader.list_deliveries(DeliveryFilter(), None, 10))
        assert stored == ["after", "before"]  # what was answered 503 was not stored
    finally:
        reader.close()


def test_the_admin_api_answers_503_when_the_store_fails_under_it(pg_url, relay_env):
    token = "admin-token-for-store-faults-4d1a"
    bearer = {"authorization": f"Bearer {token}"}
    destinations = json.dumps([{"name": "crm", "url": "http://127.0.0.1:9/hooks",
                                "secret": "whsec_" + "QUJD" * 8}])
    with start({**relay_env, "RELAY_DATABASE_URL": pg_url, "RELAY_ADMIN_TOKEN": token,
                "RELAY_DESTINATIONS": destinations}) as client:
        with psycopg.connect(pg_url, autocommit=True) as conn:  # a fault the store reports, not a bug
            conn.execute("DROP TABLE paused_destinations")
        for method, path in (("POST", "/admin/api/destinations/crm/resume"), ("GET", "/admin/api/summary")):
            answer = client.request(method, path, headers=bearer)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5", answer.text
            body = answer.json()
            assert body["error_code"] == "store_unavailable" and body["request_id"]
            assert pg_url.split("@")[0] not in answer.text  # the database password stays out
