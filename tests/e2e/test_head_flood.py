"""Request heads cannot take a relay's memory (hardening round three, 2).

Unauthenticated and cheap to send: an unfinished head of thousands of tiny headers cost
the server over half a megabyte per connection, a thousand of them got it killed in a
512 MB machine, and so did a slowloris of twenty thousand connections. Now a head is
refused past MAX_HEADERS or MAX_REQUEST_HEAD_BYTES, unfinished heads share a budget, and
past RELAY_MAX_CONNECTIONS the connections waiting longest for a head make room.
"""

from __future__ import annotations

import selectors
import socket
import time

import httpx
import pytest

from tests.e2e.conftest import SMALL_MACHINE_BYTES
from tests.helpers import eventually, vapi_headers, with_call_id

pytestmark = pytest.mark.e2e

TINY_HEADERS = b"POST /webhooks/vapi HTTP/1.1\r\nHost: x\r\n" + b"".join(b"a%d: b\r\n" % n for n in range(5000))


def open_connections(port: int, count: int, sending: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(sending)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while it was still sending: what a flood should get
        sockets.append(sock)
    return sockets


def closed_by_the_relay(sockets: list[socket.socket], within: float, enough: int | None = None) -> int:
    """How many of `sockets` the relay closes (answer read, then EOF or reset) within
    `within` seconds, counting no further than `enough`."""
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + within
    while selector.get_map() and closed < (enough or len(sockets)) and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=min(left, 0.2)):
            try:
                data = key.fileobj.recv(65536)
            except (ConnectionResetError, BlockingIOError) as error:
                data = b"" if isinstance(error, ConnectionResetError) else None
            if data == b"":
                closed += 1
                selector.unregister(key.fileobj)
    selector.close()
    return closed


def still_serving(relay) -> None:
    """The relay answers /health and stores a real webhook, quickly."""
    started = time.monotonic()
    assert httpx.get(f"{relay.url}/health", timeout=5).status_code == 200
    body = with_call_id("vapi/end-of-call-report", f"after-flood-{time.time_ns()}")
    assert httpx.post(f"{relay.url}/webhooks/vapi", content=body, headers=vapi_headers(), timeout=5).status_code == 200
    assert time.monotonic() - started < 2


def memory_figures(relay, cgroup) -> dict[str, int]:
    figures = {"peak_rss_mib": relay.peak_rss() // 2**20}
    if cgroup is not None:
        figures |= {"cgroup_peak_mib": cgroup.peak // 2**20, "oom_kills": cgroup.oom_kills}
    return figures


def test_unfinished_heads_of_thousands_of_tiny_headers_are_refused_cheaply(
        start_relay, relay_env, small_machine, record_property):
    relay = start_relay({**relay_env, "RELAY_LOG_LEVEL": "warning"}, cgroup=small_machine)
    flood = open_connections(relay.port, 1000, TINY_HEADERS)  # 44 MB sent in all
    try:
        assert closed_by_the_relay(flood, 30) == len(flood), "unfinished heads of 5,000 headers were kept"
        assert relay.process.poll() is None and relay.children(), "the relay died under the flood"
        still_serving(relay)
        figures = memory_figures(relay, small_machine)
    finally:
        for sock in flood:
            sock.close()
    for name, value in figures.items():
        record_property(name, value)
    assert figures.get("oom_kills", 0) == 0, figures
    assert relay.peak_rss() < SMALL_MACHINE_BYTES // 2, figures


def test_a_slowloris_past_the_connection_limit_makes_room_for_real_webhooks(
        start_relay, relay_env, small_machine, record_property):
    relay = start_relay({**relay_env, "RELAY_LOG_LEVEL": "warning", "RELAY_MAX_CONNECTIONS": "1000",
                         "RELAY_HEAD_TIMEOUT_SECONDS": "60"}, cgroup=small_machine)
    slowloris = open_connections(relay.port, 3000, b"POST /webhooks/vapi HTTP/1.1\r\nHost: x\r\nX-a: ")
    try:
        # Each connection past the thousandth closed one that waited longer for its head.
        closed = closed_by_the_relay(slowloris, 10, enough=2000)
        assert closed >= 2000, f"the relay kept {3000 - closed} connections, past RELAY_MAX_CONNECTIONS=1000"
        # Held at the limit, it still takes a real webhook at once (the oldest make room).
        still_serving(relay)
        assert relay.process.poll() is None
        figures = memory_figures(relay, small_machine)
    finally:
        for sock in slowloris:
            sock.close()
    eventually(lambda: "connections_recycled" in relay.logs(), timeout=5)
    for name, value in figures.items():
        record_property(name, value)
    assert figures.get("oom_kills", 0) == 0, figures
    assert relay.peak_rss() < SMALL_MACHINE_BYTES // 2, figures
