"""Retell's ended calls, for reconciliation: `POST /v3/list-calls` and the `call_ended`
webhook each ended call would have sent.

Paths and shapes follow retell-sdk 6.2.13: listing moved from `/v2/list-calls` to
`/v3/list-calls` (cursor paging: `{items, has_more, pagination_key}`), and one call is
`GET /v2/get-call/{call_id}`. The window is on `end_timestamp`, so a call that was still
going during one run is listed by the run after it ends. The listing leaves transcripts
out, so each call the outbox does not hold yet is fetched whole before it is stored.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec

from relay.core import jsonbody
from relay.core.errors import ProviderApiError
from relay.providers.calls import (
    Api,
    CallSource,
    Fields,
    ListedCall,
    Page,
    Window,
    fields_of,
    fitting,
    present,
    small,
)

#: Calls per page (Retell allows 1000): each listed call the outbox lacks costs a fetch
#: before the page's progress is saved, so pages stay small enough to finish quickly.
PAGE_LIMIT = 100
#: Calls whose end sends `call_ended`: those that connected, and those that never did
#: (dial failed, busy, no answer), which send it without a `call_started`.
ENDED_STATUSES = ("ended", "not_connected")


def list_request(window: Window, token: str | None, limit: int = PAGE_LIMIT) -> dict[str, Any]:
    """The body of `POST /v3/list-calls` for one page. Both ends of the range are
    included and widened to whole milliseconds: a call listed twice costs nothing."""
    body: dict[str, Any] = {
        "filter_criteria": {
            "end_timestamp": {"op": "bt", "type": "range",
                              "value": [math.floor(window.start * 1000), math.ceil(window.end * 1000)]},
            "call_status": {"op": "in", "type": "enum", "value": list(ENDED_STATUSES)},
        },
        "sort_order": "ascending",
        "limit": limit,
    }
    if token is not None:
        body["pagination_key"] = token
    return body


def call_ended(call: Fields) -> bytes:
    """The `call_ended` webhook for this call: all of it but `call_analysis`, which
    only `call_analyzed` carries."""
    return jsonbody.dumps({"event": "call_ended",
                           "call": {name: value for name, value in call.items() if name != "call_analysis"}})


def listed_call(item: msgspec.Raw) -> ListedCall | None:
    call = fields_of(item)
    call_id = small(call.get("call_id")) if call is not None else None
    if call is None or not call_id:
        return None
    ended = small(call.get("call_status")) in ENDED_STATUSES and present(call.get("end_timestamp"))
    return ListedCall(call_id, ended)  # the listing leaves transcripts out: fetched whole to be stored


class _Listing(msgspec.Struct):
    """A page of `POST /v3/list-calls`: its calls are read one at a time."""

    items: list[msgspec.Raw]
    has_more: bool | None = None
    pagination_key: str | None = None


@dataclass
class _Paging:
    """How far a listing of one window got."""

    token: str | None
    limit: int = PAGE_LIMIT  # halved for the rest of the window when a page is too large
    done: bool = False


class RetellCalls(CallSource):
    event = "call_ended"

    async def pages(self, api: Api, window: Window, token: str | None) -> AsyncGenerator[Page, None]:
        paging = _Paging(token)
        while not paging.done:
            # Yielded without a name: no page outlives the request for the next one.
            yield await self._page(api, window, paging)

    async def _page(self, api: Api, window: Window, paging: _Paging) -> Page:
        answer, paging.limit = await fitting(
            lambda limit: api.post("/v3/list-calls", list_request(window, paging.token, limit), into=_Listing),
            paging.limit, "retell")
        if answer.has_more and answer.pagination_key is None:
            raise ProviderApiError("Retell said it has more calls but gave no pagination_key")
        paging.token = answer.pagination_key if answer.has_more else None
        paging.done = paging.token is None
        return Page([call for item in answer.items if (call := listed_call(item)) is not None], paging.token)

    async def webhook(self, api: Api, call: ListedCall) -> bytes | None:
        path = f"/v2/get-call/{quote(call.call_id, safe='')}"
        whole = await api.get(path, missing_ok=True, into=Fields)
        if whole is None:
            return None
        if small(whole.get("call_id")) != call.call_id:
            raise ProviderApiError(f"Retell answered /v2/get-call/{call.call_id} with another call")
        return call_ended(whole)
