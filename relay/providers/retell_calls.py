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
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

from relay import jsonbody
from relay.errors import ProviderApiError
from relay.providers.calls import Api, CallSource, ListedCall, Page, Window

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


def call_ended(call: Mapping[str, Any]) -> bytes:
    """The `call_ended` webhook for this call: all of it but `call_analysis`, which
    only `call_analyzed` carries."""
    return jsonbody.dumps({"event": "call_ended",
                           "call": {name: value for name, value in call.items() if name != "call_analysis"}})


def listed_call(call: object) -> ListedCall | None:
    if not isinstance(call, Mapping) or not isinstance(call.get("call_id"), str) or not call["call_id"]:
        return None
    ended = call.get("call_status") in ENDED_STATUSES and call.get("end_timestamp") is not None
    return ListedCall(call["call_id"], ended, call_ended(call), whole=False)


class RetellCalls(CallSource):
    async def pages(self, api: Api, window: Window, token: str | None) -> AsyncIterator[Page]:
        while True:
            answer = await api.post("/v3/list-calls", list_request(window, token))
            items = answer.get("items") if isinstance(answer, Mapping) else None
            if not isinstance(items, list):
                raise ProviderApiError("Retell answered /v3/list-calls without a list of items")
            token = answer.get("pagination_key") if answer.get("has_more") else None
            if answer.get("has_more") and not isinstance(token, str):
                raise ProviderApiError("Retell said it has more calls but gave no pagination_key")
            yield Page([call for item in items if (call := listed_call(item)) is not None], token)
            if token is None:
                return

    async def fetch(self, api: Api, call: ListedCall) -> bytes | None:
        whole = await api.get(f"/v2/get-call/{quote(call.call_id, safe='')}", missing_ok=True)
        if whole is None:
            return None
        if not isinstance(whole, Mapping) or whole.get("call_id") != call.call_id:
            raise ProviderApiError(f"Retell answered /v2/get-call/{call.call_id} with another call")
        return call_ended(whole)
