"""Requests to a provider's API, made with the patience someone else's service deserves.

A 429 (after its Retry-After), a 5xx, a 408, a timeout or a lost connection is tried
again with exponential backoff (tenacity), a few times; a Retry-After longer than
`MAX_WAIT` ends the run at once instead, since the next run asks again anyway. 401 and
403 mean the key is wrong (`ProviderKeyRefused`); anything else unexpected is a
`ProviderApiError` saying what came back. Sleeping and the clock are injected, so tests
never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_exponential,
)

from relay import __version__, jsonbody
from relay.errors import ProviderApiError, ProviderKeyRefused
from relay.providers import Provider
from relay.providers.calls import CallSource
from relay.retry import parse_retry_after
from relay.transport import Transport, describe_error

log = structlog.get_logger("relay.reconciliation")

#: Tries per request, and the longest wait between two (a longer Retry-After ends the run).
MAX_TRIES = 5
MAX_WAIT = 60.0
_backoff = wait_exponential(multiplier=1.0, max=MAX_WAIT)  # 1, 2, 4, 8 s
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: A VAPI page holds whole calls (transcripts, messages), each up to several MB.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Requests are made one at a time; a spare connection covers a reconnect.
MAX_CONNECTIONS = 2
#: How much of an unexpected answer an error keeps.
MAX_ERROR_TEXT = 300


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


def _asked_too_long(state: RetryCallState) -> bool:
    asked = _asked(state)
    return asked is not None and asked > MAX_WAIT


class ProviderApi:
    """One provider's API (`relay.providers.calls.Api`), authenticated with its key."""

    def __init__(self, provider: Provider, source: CallSource, *, proxy: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self._source = source
        self._sleep = sleep
        self._clock = clock
        self._client = httpx.AsyncClient(
            base_url=source.base_url, timeout=TIMEOUT, follow_redirects=False,
            headers={"Authorization": f"Bearer {source.api_key.reveal()}",
                     "User-Agent": f"roark-relay/{__version__}", "Accept": "application/json"},
            transport=transport or Transport(max_connections=MAX_CONNECTIONS, proxy=proxy,
                                             max_response_bytes=MAX_RESPONSE_BYTES))

    async def get(self, path: str, params: Mapping[str, Any] | None = None, *,
                  missing_ok: bool = False) -> Any:
        """The JSON answer; None for a 404 when `missing_ok`."""
        return await self._request("GET", path, missing_ok, params=params)

    async def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self._request("POST", path, False, json=body)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, missing_ok: bool, **options: Any) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_any(stop_after_attempt(MAX_TRIES), _asked_too_long),
            wait=_wait,
            sleep=self._sleep,
            before_sleep=lambda state: log.warning(
                "reconcile_api_retry", provider=self._provider.name, request=f"{method} {path}",
                why=state.outcome.exception().why, wait_seconds=round(state.upcoming_sleep, 1)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, path, missing_ok, options)
        except _Transient as error:
            tries = retrying.statistics.get("attempt_number", 1)
            if error.retry_after is not None and error.retry_after > MAX_WAIT:
                raise ProviderApiError(
                    f"{self._provider.title} asked the relay to wait {error.retry_after:.0f} s "
                    f"({error.why} to {method} {path}); the next run asks again") from None
            raise ProviderApiError(
                f"{self._provider.title} {method} {self._source.base_url}{path} failed {tries} "
                f"time{'s' if tries > 1 else ''}, last: {error.why}") from None

    async def _once(self, method: str, path: str, missing_ok: bool, options: dict[str, Any]) -> Any:
        try:
            response = await self._client.request(method, path, **options)
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
        try:
            return jsonbody.loads_exact(response.content)
        except (ValueError, RecursionError):
            raise ProviderApiError(f"{self._provider.title} answered {method} {path} with a body "
                                   "that is not JSON") from None
