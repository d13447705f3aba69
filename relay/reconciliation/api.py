"""Requests to a provider's API, made with the patience someone else's service deserves.

Requests start at least RELAY_RECONCILE_REQUEST_INTERVAL_SECONDS apart. A 429 (after its
Retry-After), a 5xx, a 408, a timeout or a lost connection is tried again with
exponential backoff (tenacity), a few times; a Retry-After longer than `MAX_WAIT` ends
the run at once instead, since the next run asks again anyway. 401 and 403 mean the key
is wrong (`ProviderKeyRefused`); an answer larger than RELAY_RECONCILE_MAX_ANSWER_BYTES
is not read (`ProviderAnswerTooLarge`, never retried: it would come back as large);
anything else unexpected is a `ProviderApiError` saying what came back. Sleeping and the
clock are injected, so tests never wait.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_exponential,
)
from tenacity.stop import stop_base

from relay import __version__
from relay.core import jsonbody
from relay.core.errors import ProviderAnswerTooLarge, ProviderApiError, ProviderKeyRefused
from relay.core.transport import AnswerTooLarge, Transport, describe_error, parse_retry_after, request_timeout
from relay.providers import Provider
from relay.providers.calls import CallSource

log = structlog.get_logger("relay.reconciliation")

#: Tries per request, and the longest wait between two (a longer Retry-After ends the run).
MAX_TRIES = 5
MAX_WAIT = 60.0
_backoff = wait_exponential(multiplier=1.0, max=MAX_WAIT)  # 1, 2, 4, 8 s
#: Requests are made one at a time; a spare connection covers a reconnect.
MAX_CONNECTIONS = 2
#: How much of an unexpected answer an error keeps.
MAX_ERROR_TEXT = 300
#: The slices an answer's UTF-8 is checked in, so that no decoded copy of it is made.
UTF8_CHECK_BYTES = 64 * 1024


class _Transient(Exception):
    """An answer worth asking again for."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


def _asked(state: RetryCallState) -> float | None:
    error = state.outcome.exception() if state.outcome else None
    return error.retry_after if isinstance(error, _Transient) else None


def _wait(state: RetryCallState) -> float:
    """Exponential backoff, or longer when the provider asked for longer."""
    return max(_backoff(state), _asked(state) or 0.0)


class _AskedTooLong(stop_base):
    """Stops once the provider asks for a wait longer than MAX_WAIT."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        asked = _asked(retry_state)
        return asked is not None and asked > MAX_WAIT


class ProviderApi:
    """One provider's API (`relay.providers.calls.Api`), authenticated with its key."""

    def __init__(self, provider: Provider, source: CallSource, *, max_answer_bytes: int,
                 request_interval: float, deadline: float, proxy: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self._source = source
        self._max_answer_bytes = max_answer_bytes
        self._interval = request_interval
        self._sleep = sleep
        self._clock = clock
        self._last_start: float | None = None
        self._client = httpx.AsyncClient(
            base_url=source.base_url, timeout=request_timeout(deadline),
            follow_redirects=False,
            headers={"Authorization": f"Bearer {source.api_key.reveal()}",
                     "User-Agent": f"roark-relay/{__version__}", "Accept": "application/json"},
            transport=transport or Transport(max_connections=MAX_CONNECTIONS, proxy=proxy,
                                             max_response_bytes=max_answer_bytes))

    async def get(self, path: str, params: Mapping[str, Any] | None = None, *, into: Any,
                  missing_ok: bool = False) -> Any:
        """The answer decoded into the msgspec type `into`; None for a 404 when `missing_ok`."""
        return await self._request("GET", path, into, missing_ok, params=params)

    async def post(self, path: str, body: Mapping[str, Any], *, into: Any) -> Any:
        return await self._request("POST", path, into, False, json=body)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, into: Any, missing_ok: bool, **options: Any) -> Any:
        if self._last_start is not None and (too_soon := self._last_start + self._interval - self._clock()) > 0:
            await self._sleep(too_soon)  # requests start the interval apart at least

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            assert isinstance(error, _Transient)  # the only error retried
            log.warning("reconcile_api_retry", provider=self._provider.name, request=f"{method} {path}",
                        why=error.why, wait_seconds=round(state.upcoming_sleep, 1))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_any(stop_after_attempt(MAX_TRIES), _AskedTooLong()),
            # A try again is a request too: it waits at least the interval.
            wait=lambda state: max(_wait(state), self._interval),
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self._last_start = self._clock()
                    return await self._once(method, path, into, missing_ok, options)
        except _Transient as error:
            tries = retrying.statistics.get("attempt_number", 1)
            if error.retry_after is not None and error.retry_after > MAX_WAIT:
                raise ProviderApiError(
                    f"{self._provider.title} asked the relay to wait {error.retry_after:.0f} s "
                    f"({error.why} to {method} {path}); the next run asks again") from None
            raise ProviderApiError(
                f"{self._provider.title} {method} {self._source.base_url}{path} failed {tries} "
                f"time{'s' if tries > 1 else ''}, last: {error.why}") from None

    async def _once(self, method: str, path: str, into: Any, missing_ok: bool, options: dict[str, Any]) -> Any:
        try:
            response = await self._client.request(method, path, **options)
        except AnswerTooLarge as error:
            raise ProviderAnswerTooLarge(
                f"{self._provider.title}'s answer to {method} {path} is larger than RELAY_RECONCILE_MAX_ANSWER_BYTES "
                f"({self._max_answer_bytes}) allows: {error}") from None
        except httpx.TransportError as error:
            raise _Transient(describe_error(error)) from error
        status = response.status_code
        if status in (401, 403):
            raise ProviderKeyRefused(f"{self._provider.title} refused {self._source.key_variable} "
                                     f"(HTTP {status} to {method} {path}): check the key")
        if status == 404 and missing_ok:
            return None
        if status in (408, 429) or status >= 500:
            raise _Transient(f"HTTP {status}", parse_retry_after(response.headers, self._clock()))
        if not response.is_success:
            raise ProviderApiError(f"{self._provider.title} answered HTTP {status} to {method} "
                                   f"{self._source.base_url}{path}: {response.text[:MAX_ERROR_TEXT]}")
        return self._decoded(method, path, response.content, into)

    def _decoded(self, method: str, path: str, content: bytes, into: Any) -> Any:
        """The answer as `into`. Its calls are kept as the provider wrote them, so it is
        checked here to be what the relay stores: JSON, in UTF-8."""
        content = jsonbody.without_bom(content)
        utf8 = codecs.getincrementaldecoder("utf-8")()
        try:
            with memoryview(content) as view:
                for start in range(0, len(view), UTF8_CHECK_BYTES):
                    utf8.decode(view[start:start + UTF8_CHECK_BYTES])
            utf8.decode(b"", final=True)
            return jsonbody.loads_as(content, into)
        except UnicodeDecodeError as error:
            problem = f"a body that is not UTF-8 ({error.reason} at byte {error.start})"
        except msgspec.ValidationError as error:
            problem = f"a body the relay cannot read: {error}"
        except (ValueError, RecursionError):
            problem = "a body that is not JSON"
        raise ProviderApiError(f"{self._provider.title} answered {method} {path} with {problem}")
