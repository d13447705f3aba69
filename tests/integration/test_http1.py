"""relay.http1, the forwarder's HTTP/1.1 transport, against raw loopback servers that
answer the ways servers do: by length, chunked, until close, slowly, not at all, too
much; and that close idle keep-alive connections."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from relay.http1 import Transport
from tests.helpers import free_port

OK = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"


class Server:
    """Answers every request with `answer` (None: never answers); counts connections."""

    def __init__(self, answer: bytes | None, close_after: bool = False) -> None:
        self.answer, self.close_after = answer, close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.port = free_port()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                if self.answer is not None:
                    writer.write(self.answer)
                if self.close_after or self.answer is UNTIL_CLOSE:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def url(self, path: str = "/v1/vapi/call") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def post(url: str, body: bytes = b'{"a":1}', timeout: float = 5.0) -> httpx.Request:
    return httpx.Request("POST", url, content=body, headers={"Content-Type": "application/json"},
                         extensions={"timeout": httpx.Timeout(timeout, connect=2.0).as_dict()})


async def send(transport: Transport, request: httpx.Request) -> httpx.Response:
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


def test_keeps_connections_alive_and_sends_the_request_as_given():
    async def scenario():
        async with Server(OK) as server:
            transport = Transport(max_connections=4)
            for _ in range(5):
                response = await send(transport, post(server.url("/v1/vapi/call?x=1")))
                assert (response.status_code, response.json()) == (201, {"ok": True})
            await transport.aclose()
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v1/vapi/call?x=1 HTTP/1.1\r\n") and body == b'{"a":1}'
        assert b"content-type: application/json" in head.lower()
    run(scenario())


@pytest.mark.parametrize("answer, text", [(CHUNKED, "hello world"), (UNTIL_CLOSE, "all of it")])
def test_reads_chunked_and_close_delimited_bodies(answer, text):
    async def scenario():
        async with Server(answer) as server:
            transport = Transport(max_connections=2)
            for _ in range(2):
                assert (await send(transport, post(server.url()))).text == text
            await transport.aclose()
        assert server.connections == (2 if answer is UNTIL_CLOSE else 1)
    run(scenario())


def test_a_connection_the_server_closed_is_not_reused():
    async def scenario():
        async with Server(OK, close_after=True) as server:
            transport = Transport(max_connections=2)
            for _ in range(3):
                assert (await send(transport, post(server.url()))).status_code == 201
                await asyncio.sleep(0.05)  # the close reaches the client
            await transport.aclose()
        assert server.connections == 3
    run(scenario())


def test_failures_are_httpx_transport_errors():
    async def scenario():
        transport = Transport(max_connections=2, max_response_bytes=5)
        with pytest.raises(httpx.ConnectError):
            await send(transport, post(f"http://127.0.0.1:{free_port()}/"))
        async with Server(None) as silent:
            with pytest.raises(httpx.ReadTimeout):
                await send(transport, post(silent.url(), timeout=0.2))
        async with Server(OK) as chatty:
            with pytest.raises(httpx.RemoteProtocolError):
                await send(transport, post(chatty.url()))
        async with Server(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ncut", close_after=True) as cut:
            with pytest.raises(httpx.ReadError):
                await send(Transport(max_connections=1), post(cut.url()))
        async with Server(b"not http at all\r\n\r\n") as garbled:
            with pytest.raises(httpx.RemoteProtocolError):
                await send(Transport(max_connections=1), post(garbled.url()))
        await transport.aclose()
    run(scenario())


def test_never_more_connections_than_allowed():
    async def scenario():
        async with Server(OK) as server:
            transport = Transport(max_connections=3)
            responses = await asyncio.gather(*(send(transport, post(server.url())) for _ in range(20)))
            await transport.aclose()
        assert all(r.status_code == 201 for r in responses) and server.connections <= 3
    run(scenario())


def test_the_roark_client_leaves_proxied_connections_to_httpx(monkeypatch):
    from relay.settings import Settings
    from relay.upstream import _transport

    settings = Settings.from_env({"ROARK_API_KEY": "rk", "ROARK_BASE_URL": "https://api.roark.ai"})
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(_transport(settings), Transport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert isinstance(_transport(settings), httpx.AsyncHTTPTransport)
    monkeypatch.setenv("NO_PROXY", "api.roark.ai")
    assert isinstance(_transport(settings), Transport)
