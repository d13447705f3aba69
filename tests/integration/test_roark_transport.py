"""The delivery transport (relay.core.delivery_transport) against raw loopback servers that answer
the ways servers do: with interim responses, by length, chunked, until close, slowly, not
at all, too much, through a proxy, over TLS; and that close idle keep-alive connections."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time

import pytest

from relay.core.backoff import RetryPolicy
from relay.forwarding.attempt import Outcome
from relay.forwarding.retry import RetryAt, decide
from relay.forwarding.roark import RoarkClient
from relay.outbox import Delivery, State
from relay.settings import Settings
from tests.helpers import ROARK_KEY, free_port, with_call_id

CALL_ID = "11111111-2222-4333-8444-555555555555"
JSON = b'{"data":{"call_id":"%s"}}' % CALL_ID.encode()
CREATED = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(JSON), JSON))
CHUNKED = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"%x\r\n%s\r\n0\r\n\r\n" % (len(JSON), JSON))
UNTIL_CLOSE = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + JSON
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await reader.readexactly(length)


class Server:
    """Answers every request with `answer` (None: never answers); counts connections and
    closes those idle for `idle_timeout` seconds, as servers do."""

    def __init__(self, answer: bytes | None = CREATED, *, close_after: bool = False,
                 idle_timeout: float | None = None, tls: ssl.SSLContext | None = None,
                 trickle: float | None = None) -> None:
        self.answer, self.close_after, self.idle_timeout, self.tls = answer, close_after, idle_timeout, tls
        self.trickle = trickle  # seconds between the answer's bytes (None: all at once)
        self.connections = self.idle_closes = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        request = await read_request(reader)
                except TimeoutError:
                    self.idle_closes += 1
                    return
                self.requests.append(request)
                if self.answer is None:
                    await reader.read()  # holds the connection open, answering nothing
                    return
                if self.trickle is None:
                    writer.write(self.answer)
                else:
                    for byte in self.answer:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(self.trickle)
                await writer.drain()
                if self.close_after or self.answer is UNTIL_CLOSE:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def url(self, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}"


def client(base_url: str, timeout: float = 5.0, **env: str) -> RoarkClient:
    return RoarkClient(settings(base_url, timeout, **env))


def settings(base_url: str, timeout: float = 5.0, **env: str) -> Settings:
    return Settings.from_env({
        "ROARK_API_KEY": ROARK_KEY, "ROARK_BASE_URL": base_url, "ROARK_TIMEOUT_SECONDS": str(timeout), **env,
    })


def delivery() -> Delivery:
    body = with_call_id("vapi/end-of-call-report", CALL_ID)
    return Delivery(1, "vapi", "end-of-call-report", CALL_ID, f"end-of-call-report:{CALL_ID}", body,
                    time.time(), State.DELIVERING, 0, 0.0, "lease", None, None, None, None, None,
                    time.time(), "req-1")


async def deliver_once(base_url: str, timeout: float = 5.0, **env: str) -> Outcome:
    roark = client(base_url, timeout, **env)
    try:
        return await roark.deliver(delivery(), time.time())
    finally:
        await roark.aclose()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def assert_delivered(outcome: Outcome) -> None:
    assert (outcome.result.status_code, outcome.roark_call_id, outcome.error) == (201, CALL_ID, None)


def assert_retried(outcome: Outcome, error: str) -> None:
    assert outcome.result.status_code is None and outcome.error.startswith(error), outcome.error
    assert isinstance(decide(RetryPolicy(), 1, outcome.result, time.time()), RetryAt)


def test_keeps_one_connection_alive_and_sends_the_delivery_as_given():
    async def scenario():
        async with Server() as server:
            roark = client(server.url())
            for _ in range(3):
                assert_delivered(await roark.deliver(delivery(), time.time()))
            await roark.aclose()
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/vapi/call HTTP/1.1\r\n") and body.startswith(b"{")
        assert f"authorization: bearer {ROARK_KEY}".encode() in head.lower()
        assert b"x-request-id: req-1" in head.lower() and b"accept-encoding: identity" in head.lower()
    run(scenario())


@pytest.mark.parametrize("answer", [CHUNKED, UNTIL_CLOSE, INTERIM + CREATED],
                         ids=["chunked", "until-close", "100-and-103-first"])
def test_reads_every_framing_of_the_answer(answer):
    async def scenario():
        async with Server(answer) as server:
            assert_delivered(await deliver_once(server.url()))
    run(scenario())


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def scenario():
        async with Server(idle_timeout=1.0) as server:
            roark = client(server.url())
            assert_delivered(await roark.deliver(delivery(), time.time()))
            await asyncio.sleep(1.5)  # idle past the server's keep-alive timeout
            assert server.idle_closes == 1
            assert_delivered(await roark.deliver(delivery(), time.time()))  # the first attempt succeeds
            await roark.aclose()
        assert server.connections == 2
    run(scenario())


def test_a_redirect_is_an_answer_not_followed():
    async def scenario():
        async with Server() as elsewhere:
            moved = b"HTTP/1.1 302 Found\r\nLocation: %s/v1/vapi/call\r\nContent-Length: 0\r\n\r\n"
            async with Server(moved % elsewhere.url().encode()) as server:
                outcome = await deliver_once(server.url())
        assert outcome.result.status_code == 302 and elsewhere.requests == []
    run(scenario())


class Proxy:
    """A forward proxy that knows the only address of `roark.test`: the upstream's."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.request_lines: list[bytes] = []

    async def __aenter__(self) -> Proxy:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        line, _, rest = request.partition(b"\r\n")
        self.request_lines.append(line)
        method, target, version = line.split(b" ")
        path = target.split(b"/", 3)[3]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up_writer.write(b"%s /%s %s\r\n%s" % (method, path, version, rest))
        writer.write(await up_reader.readuntil(b"\r\n\r\n" + JSON))
        up_writer.close()
        writer.close()


def test_goes_through_the_proxy_the_environment_names():
    async def scenario():
        async with Server() as server, Proxy(server.port) as proxy:
            assert_delivered(await deliver_once(server.url("roark.test"),
                                                HTTP_PROXY=f"http://127.0.0.1:{proxy.port}"))
        assert proxy.request_lines == [b"POST http://roark.test:%d/v1/vapi/call HTTP/1.1" % server.port]
    run(scenario())


@pytest.mark.parametrize("env, chosen", [
    ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
    ({"https_proxy": "http://lower:3128"}, "http://lower:3128"),
    ({"ALL_PROXY": "http://all:3128"}, "http://all:3128"),
    ({"HTTP_PROXY": "http://proxy:3128"}, None),  # for http URLs only
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"}, None),
    ({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "other.test, roark.example.com"}, None),
])
def test_the_proxy_for_roark_is_chosen_as_curl_chooses_it(env, chosen):
    assert settings("https://roark.example.com", **env).roark_proxy == chosen


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    # A server's certificate, not a CA's: the verifier refuses a CA's as a server's.
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def test_verifies_tls_against_the_certificates_in_ssl_cert_file(monkeypatch, certificate):
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    async def scenario():
        async with Server(tls=tls) as server:
            monkeypatch.delenv("SSL_CERT_FILE", raising=False)
            assert_retried(await deliver_once(server.url(scheme="https")),
                           "ConnectError: invalid peer certificate: UnknownIssuer")
            monkeypatch.setenv("SSL_CERT_FILE", cert)
            assert_delivered(await deliver_once(server.url(scheme="https")))
    run(scenario())


def test_transport_failures_are_retried_and_named_for_what_they_are():
    async def scenario():
        refused = await deliver_once(f"http://127.0.0.1:{free_port()}")
        assert_retried(refused, "ConnectError: tcp connect error: Connection refused")
        async with Server(None) as silent:
            assert_retried(await deliver_once(silent.url(), timeout=1), "ReadTimeout: no whole answer within 1 s")
        async with Server(b"", close_after=True) as dropping:  # reads the request, closes without a word
            assert_retried(await deliver_once(dropping.url()),
                           "ConnectError: connection closed before message completed")
        async with Server(b"HTTP/1.1 201 Created\r\nContent-Length: 50\r\n\r\ncut", close_after=True) as cut:
            assert_retried(await deliver_once(cut.url()),
                           "BodyDecodeError: error decoding response body: error reading a body from connection: "
                           "end of file before message length reached")
        async with Server(b"not http at all\r\n\r\n") as garbled:
            assert_retried(await deliver_once(garbled.url()), "DecodeError: invalid HTTP version parsed")
    run(scenario())


def test_an_answer_that_trickles_ends_at_the_deadline_not_at_its_last_byte():
    # Each byte resets a per-read timeout; only a deadline for the whole answer ends it.
    async def scenario():
        async with Server(CREATED, trickle=0.2) as trickling:  # 24 s for the whole answer
            started = time.monotonic()
            assert_retried(await deliver_once(trickling.url(), timeout=1), "ReadTimeout: no whole answer within 1 s")
            assert time.monotonic() - started < 3
    run(scenario())


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_answer_over_a_mebibyte_is_refused_unread(framing):
    big = b"x" * (1024 * 1024 + 1)
    answer = (b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big) if framing == "length"
              else b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
              % (len(big), big))

    async def scenario():
        async with Server(answer) as server:
            assert_retried(await deliver_once(server.url()), "AnswerTooLarge: the answer")
    run(scenario())
