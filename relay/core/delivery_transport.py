"""How forwarding sends a delivery (to Roark or a destination): one POST and its whole
answer over pyreqwest, a Rust HTTP client (reqwest and hyper) that does its connection
handling and parsing on a thread of its own, outside the interpreter.

The forwarding process spends most of its CPU per delivery in its HTTP client, and this
one costs a fraction of aiohttp's (BENCHMARKS.md, `python -m bench.clients`). Everything
else the relay sends (reconciliation, results, alerts, the pass-through, `relay check`)
goes through httpx (relay.core.transport), which these few hundred microseconds a
request do not matter for. Both keep the same behaviours, which the transport tests pin:

- idle connections closed after KEEPALIVE_SECONDS, before common servers close them;
- the proxy the settings chose, and no other (the environment's are not read here);
- TLS verified against the system's certificates, or those SSL_CERT_FILE / SSL_CERT_DIR
  name (read by the platform verifier, as OpenSSL reads them for httpx);
- a deadline for the whole answer, not per read: a trickling answer ends at it;
- answers bounded to `max_response_bytes`, refused unread when they announce more;
- failures named for what they are, without the URL (a destination's may be secret).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectTimeoutError, PyreqwestError
from pyreqwest.proxy import ProxyBuilder
from pyreqwest.response import Response

from relay.core.transport import CONNECT_SECONDS, KEEPALIVE_SECONDS, MAX_RESPONSE_BYTES


@dataclass(frozen=True)
class Answer:
    """A whole answer: its status, headers (any case) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.content)


class SendFailed(Exception):
    """No whole answer came; `str()` names what went wrong and says it in full."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)


class DeliveryTransport:
    def __init__(self, *, max_connections: int, proxy: str | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._max_connections = max_connections
        self._proxy = proxy
        self._max_response_bytes = max_response_bytes
        self._client: Client | None = None

    def _build(self) -> Client:
        # Built at the first send, in the process that sends: the client's runtime thread
        # would not survive the fork that starts the forwarding process.
        builder = (ClientBuilder()
                   .max_connections(self._max_connections)
                   .pool_idle_timeout(timedelta(seconds=KEEPALIVE_SECONDS))
                   .connect_timeout(timedelta(seconds=CONNECT_SECONDS))
                   # A redirect is an answer to act on (forwarding pauses), never followed.
                   .follow_redirects(False)
                   # Uncompressed answers only: a compressed one could not be bounded
                   # before inflating.
                   .default_headers({"Accept-Encoding": "identity"})
                   .gzip(False).deflate(False).brotli(False).zstd(False)
                   .no_proxy())
        if self._proxy is not None:
            builder = builder.proxy(ProxyBuilder.all(self._proxy))
        return builder.build()

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes,
                   deadline: float) -> Answer:
        """POST `body` and read the whole answer within `deadline` seconds; SendFailed when
        no whole answer came."""
        if self._client is None:
            self._client = self._build()
        request = self._client.post(url).headers(headers).body_bytes(body).build_streamed()
        try:
            async with asyncio.timeout(deadline):
                async with request as response:
                    return Answer(response.status, response.headers, await self._read(response))
        except ConnectTimeoutError as error:
            raise SendFailed("ConnectTimeout", f"no connection within {CONNECT_SECONDS:g} s") from error
        except PyreqwestError as error:
            raise SendFailed(type(error).__name__, _causes(error)) from error
        except TimeoutError as error:
            raise SendFailed("ReadTimeout", f"no whole answer within {deadline:g} s") from error

    async def _read(self, response: Response) -> bytes:
        limit = self._max_response_bytes
        length = response.headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > limit:
                raise SendFailed("AnswerTooLarge", f"the answer's {length} bytes exceed {limit}")
            return bytes(await response.bytes())  # reads what Content-Length says, no more
        chunks, size = [], 0
        reader = response.body_reader
        while (chunk := await reader.read_chunk()) is not None:
            size += len(chunk)
            if size > limit:
                raise SendFailed("AnswerTooLarge", f"the answer exceeds {limit} bytes")
            chunks.append(bytes(chunk))
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _causes(error: PyreqwestError) -> str:
    """What hyper said went wrong, from the outermost cause in, without the sentence that
    names the URL or the one that repeats the error's kind ("client error (Connect)")."""
    details = getattr(error, "details", None) or {}
    causes = [message for cause in details.get("causes") or []
              if not (message := cause["message"]).startswith(("error sending request for url", "client error ("))]
    return ": ".join(causes) or error.message
