"""The body budget cannot be taken by connections that announce bodies and never send
them, nor by one client address, nor by bodies that trickle (hardening round three, 1).

A fresh but forged signature passes every check the headers allow, so such a request is
read: what it announces must cost it nothing, what it sends must count against its own
address's share, and sending too slowly must end it within seconds, not the 30 s body
timeout.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from relay.providers import retell, vapi
from tests.helpers import RETELL_KEY, with_call_id
from tests.secret_scan import VAPI_HMAC_SECRET

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
HMAC = vapi.HmacScheme(secrets=(VAPI_HMAC_SECRET,))


def forged_head(port: int, length: int) -> bytes:
    """A Retell webhook's head with a fresh, well-formed signature made with the wrong key."""
    signature = retell.sign("not-the-retell-key", b"{}", int(time.time() * 1000))
    return (f"POST /webhooks/retell HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nx-retell-signature: {signature}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def answer_of(sock: socket.socket, timeout: float) -> tuple[int | None, float]:
    """The status the relay answered on `sock` (None: closed without one) and when."""
    started = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    status = int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, time.monotonic() - started


def post_from(source: str, url: str, body: bytes, headers: dict[str, str]) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        return client.post(f"{url}/webhooks/retell", content=body, headers=headers).status_code


def signed_retell(call_id: str, pad: int = 0) -> tuple[bytes, dict[str, str]]:
    document = json.loads(with_call_id("retell/call_ended", call_id))
    if pad:
        document["call"]["transcript"] = "a" * pad
    body = json.dumps(document).encode()
    return body, {"content-type": "application/json",
                  "x-retell-signature": retell.sign(RETELL_KEY, body, int(time.time() * 1000))}


def signed_vapi(call_id: str) -> tuple[bytes, dict[str, str]]:
    body = with_call_id("vapi/end-of-call-report", call_id)
    return body, {"content-type": "application/json", **vapi.sign_hmac(HMAC, body, str(int(time.time())))}


def test_bodies_announced_and_never_sent_hold_nothing_and_are_cut_off_within_seconds(
        start_relay, relay_env):
    relay = start_relay({**relay_env, "VAPI_HMAC_SECRET": VAPI_HMAC_SECRET})
    # 25 MiB + 7 MiB announced: the whole unverified budget, had announcements counted.
    idle = [connect(relay.port) for _ in range(2)]
    for sock, length in zip(idle, (25 * MIB, 7 * MIB), strict=True):
        sock.sendall(forged_head(relay.port, length))
    try:
        with httpx.Client(timeout=10) as http:
            answers = [http.post(f"{relay.url}/webhooks/retell", content=body, headers=headers).status_code
                       for body, headers in (signed_retell(f"announced-{n}") for n in range(10))]
            answers += [http.post(f"{relay.url}/webhooks/vapi", content=body, headers=headers).status_code
                        for body, headers in (signed_vapi(f"announced-vapi-{n}") for n in range(10))]
        assert answers == [200] * 20, answers
        cut = [answer_of(sock, 30) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    # Cut off by the minimum rate (2 s windows), long before RELAY_BODY_TIMEOUT_SECONDS (30).
    assert all(status == 408 and after < 6 for status, after in cut), cut


def test_one_address_gets_its_share_of_the_budget_and_others_still_get_in(start_relay, relay_env):
    relay = start_relay({**relay_env, "RELAY_BODY_RATE_WINDOW_SECONDS": "20"})
    greedy = [connect(relay.port, source="127.0.0.2") for _ in range(5)]
    try:
        for sock in greedy:  # 6 MiB each of 25 announced, then nothing: held until cut off
            sock.sendall(forged_head(relay.port, 25 * MIB))
            try:
                sock.sendall(b" " * (6 * MIB))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused past its share: the relay answered 503 and closed
        # 30 MiB sent from one address: at most its 8 MiB share is held (in one or two
        # of the bodies, as the reads of them interleave), and the rest refused.
        answers = [answer_of(sock, 0.5)[0] for sock in greedy]
        assert answers.count(503) >= 3 and set(answers) <= {503, None}, answers
        # The other 24 MiB of the 32 MiB budget are still there for everyone else.
        calls = [(f"127.0.0.{3 + n}", *signed_retell(f"share-{n}", pad=7 * MIB)) for n in range(3)]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda call: post_from(call[0], relay.url, call[1], call[2]), calls))
        assert answers == [200] * 3, answers
    finally:
        for sock in greedy:
            sock.close()


def test_a_body_trickling_below_the_minimum_rate_is_cut_off(start_relay, relay_env):
    relay = start_relay({**relay_env, "RELAY_BODY_MIN_BYTES_PER_SECOND": "1000",
                         "RELAY_BODY_RATE_WINDOW_SECONDS": "1"})
    with connect(relay.port) as sock:
        sock.sendall(forged_head(relay.port, 100_000))
        started = time.monotonic()
        status = None
        try:
            while time.monotonic() - started < 10 and status is None:
                sock.sendall(b" " * 100)  # 500 bytes a second: half the minimum
                sock.settimeout(0.2)
                try:
                    head = sock.recv(4096)
                    status = int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            status = 0
    assert status == 408 and time.monotonic() - started < 4, (status, time.monotonic() - started)
