"""What reconciliation may ask of a provider's API: the calls that ended in a window of
time, and for each the webhook body its end would have carried.

A provider that can be reconciled returns a `CallSource` from `Provider.call_source`;
`relay.reconciliation` drives it and stores what it finds. Requests go through an `Api`
the caller hands in (`relay.reconciliation.api`), which authenticates, paces, retries,
bounds and decodes the answers and turns failures into `ProviderApiError`, so a source
is only the provider's paths, parameters and shapes.

A call is never decoded whole: an answer is split into its calls as `msgspec.Raw`, each
call into its top-level fields, and only the few small fields the relay reads are
decoded. A webhook body is built from the rest as the provider wrote it, one call at a
time, so a run holds about one answer and one call whatever the provider sends.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import msgspec
import structlog

from relay.core import jsonbody
from relay.core.envvars import Secret
from relay.core.errors import ProviderAnswerTooLarge

log = structlog.get_logger("relay.reconciliation")

#: A call's (or any object's) top level, each value as the provider wrote it.
Fields = dict[str, msgspec.Raw]
NULL = msgspec.Raw(b"null")

T = TypeVar("T")


@dataclass(frozen=True)
class Window:
    """A span of time in epoch seconds, `start` included, `end` not."""

    start: float
    end: float


@dataclass(frozen=True)
class ListedCall:
    call_id: str
    #: Its webhook has been sent (or would have been): the call is over.
    ended: bool
    #: The call as listed, when its webhook is built from the listing; None: the listing
    #: leaves parts out, and `CallSource.webhook` gets the call whole.
    fields: Fields | None = None


@dataclass(frozen=True)
class Page:
    calls: list[ListedCall]
    #: Where the window goes on once this page is stored (a run that fails later resumes
    #: there); None: this was the window's last page.
    token: str | None


class Api(Protocol):
    """The provider's API, as `relay.reconciliation.api.ProviderApi` offers it: each
    answer decoded into the msgspec type `into`."""

    async def get(self, path: str, params: Mapping[str, Any] | None = None, *, into: Any,
                  missing_ok: bool = False) -> Any: ...

    async def post(self, path: str, body: Mapping[str, Any], *, into: Any) -> Any: ...


class CallSource(abc.ABC):
    """One provider's ended calls, read from its API with a Bearer key."""

    #: The event a call's end sends, which reconciliation stores (one of the provider's
    #: `once_per_call`, so a call's dedupe key is known before its body is built).
    event: ClassVar[str]

    def __init__(self, base_url: str, api_key: Secret, key_variable: str) -> None:
        self.base_url = base_url
        self.api_key = api_key
        #: The setting to check when the API refuses the key.
        self.key_variable = key_variable

    @abc.abstractmethod
    def pages(self, api: Api, window: Window, token: str | None) -> AsyncGenerator[Page, None]:
        """The calls whose end (or last update) falls in `window`, page by page, from
        the start or from a page's `token`. Calls may repeat; the outbox dedupes them."""

    @abc.abstractmethod
    async def webhook(self, api: Api, call: ListedCall) -> bytes | None:
        """The webhook body `call`'s end would have carried; None when the call is gone."""


# --- reading calls -------------------------------------------------------------------------


def fields_of(raw: msgspec.Raw | None) -> Fields | None:
    """The top level of a JSON object; None when `raw` is absent or not an object."""
    if raw is None:
        return None
    try:
        return jsonbody.loads_as(raw, Fields)
    except ValueError:
        return None


def small(raw: msgspec.Raw | None, into: Any = str) -> Any:
    """A small field, decoded into `into`; None when it is absent, null or anything else
    (decoding stops at the first token that does not fit, however large the value)."""
    if raw is None:
        return None
    try:
        return jsonbody.loads_as(raw, into | None)
    except ValueError:
        return None


def present(raw: msgspec.Raw | None) -> bool:
    """Whether a field is there and not null."""
    return raw is not None and raw != NULL


def is_object(raw: msgspec.Raw | None) -> bool:
    return raw is not None and memoryview(raw)[:1] == b"{"


# --- paging ---------------------------------------------------------------------------------


def halved(limit: int) -> int:
    """The page limit to ask for after a page of `limit` calls was too large to read."""
    return max(1, limit // 2)


async def fitting(ask: Callable[[int], Awaitable[T]], limit: int, provider: str) -> tuple[T, int]:
    """`ask(limit)`'s answer and the limit it was asked with: a page too large to read
    (`ProviderAnswerTooLarge`) is asked for again with half as many calls, down to one.
    One call still too large ends the run: the setting must make room for it."""
    while True:
        try:
            return await ask(limit), limit
        except ProviderAnswerTooLarge as error:
            if limit == 1:
                raise ProviderAnswerTooLarge(
                    f"{error}, with one call a page: raise RELAY_RECONCILE_MAX_ANSWER_BYTES to reconcile that call"
                ) from None
            limit = halved(limit)
            log.info("reconcile_page_too_large", provider=provider, limit=limit,
                     consequence="the page is asked for again with fewer calls")
