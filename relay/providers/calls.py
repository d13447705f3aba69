"""What reconciliation may ask of a provider's API: the calls that ended in a window of
time, and for each the webhook body its end would have carried.

A provider that can be reconciled returns a `CallSource` from `Provider.call_source`;
`relay.reconciliation` drives it and stores what it finds. Requests go through an `Api`
the caller hands in (`relay.reconciliation.api`), which authenticates, retries and
turns failures into `ProviderApiError`, so a source is only the provider's paths,
parameters and shapes.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from relay.envvars import Secret


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
    #: The webhook the call's end would have carried, as complete as the listing allows.
    body: bytes
    #: False: the listing leaves parts out, and `CallSource.fetch` gets the call whole.
    whole: bool = True


@dataclass(frozen=True)
class Page:
    calls: list[ListedCall]
    #: Where the window goes on once this page is stored (a run that fails later resumes
    #: there); None: this was the window's last page.
    token: str | None


class Api(Protocol):
    """The provider's API, as `relay.reconciliation.api.ProviderApi` offers it."""

    async def get(self, path: str, params: Mapping[str, Any] | None = None, *,
                  missing_ok: bool = False) -> Any: ...

    async def post(self, path: str, body: Mapping[str, Any]) -> Any: ...


class CallSource(abc.ABC):
    """One provider's ended calls, read from its API with a Bearer key."""

    def __init__(self, base_url: str, api_key: Secret, key_variable: str) -> None:
        self.base_url = base_url
        self.api_key = api_key
        #: The setting to check when the API refuses the key.
        self.key_variable = key_variable

    @abc.abstractmethod
    def pages(self, api: Api, window: Window, token: str | None) -> AsyncIterator[Page]:
        """The calls whose end (or last update) falls in `window`, page by page, from
        the start or from a page's `token`. Calls may repeat; the outbox dedupes them."""

    async def fetch(self, api: Api, call: ListedCall) -> bytes | None:
        """The whole webhook body of a call listed in part; None when it is gone."""
        return call.body
