"""VAPI's ended calls, for reconciliation: `GET /call` and the end-of-call-report each
ended call's webhook would have carried.

The listing is a plain JSON array with no cursor and no status filter. The window is on
`updatedAt` (a call that was still going during one run is updated when it ends, so a
later run sees it), and paging narrows the `createdAt` side of it past the calls a page
held, until a page comes back short. "Short" is judged against the largest page seen,
not only against `limit`, since a server may cap `limit` lower than asked.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import structlog

from relay.core import jsonbody
from relay.core.errors import ProviderApiError
from relay.core.timefmt import iso
from relay.providers.calls import (
    Api,
    CallSource,
    Fields,
    ListedCall,
    Page,
    Window,
    fields_of,
    fitting,
    is_object,
    present,
    small,
)

log = structlog.get_logger("relay.reconciliation")

#: Calls asked for per page (VAPI's default is 100): a page holds whole calls, with
#: transcripts and messages, which reach hundreds of KB each.
PAGE_LIMIT = 50
#: What the SDK documents as "can also be found at call.X": the report's own fields.
REPORT_FIELDS = ("endedReason", "cost", "costs", "destination", "artifact", "analysis",
                 "startedAt", "endedAt", "compliance")
#: Sent beside the call when the call has them whole (not only their ids).
PARTIES = ("assistant", "customer", "phoneNumber")


def parse_time(value: object) -> float | None:
    """Epoch seconds of a VAPI ISO 8601 timestamp; None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


# --- the report ------------------------------------------------------------------------


def recording_urls(artifact: Fields) -> dict[str, Any]:
    """The artifact with the recording URLs where a webhook has them: from
    `recording.*` when present, else the deprecated `recordingUrl` it already holds."""
    found: dict[str, Any] = dict(artifact)
    recording = small(artifact.get("recording"), dict[str, Any])
    if recording is not None:
        mono = recording.get("mono")
        combined = mono.get("combinedUrl") if isinstance(mono, Mapping) else None
        if combined:
            found["recordingUrl"] = combined
        if recording.get("stereoUrl"):
            found["stereoRecordingUrl"] = recording["stereoUrl"]
    return found


def end_of_call_report(call: Fields) -> dict[str, Any]:
    """The end-of-call-report message VAPI would have sent for this call object (as
    `GET /call` gives it). The call goes under `call` without the report's own fields,
    which the report carries at its top level, as a webhook does."""
    report: dict[str, Any] = {"type": "end-of-call-report"}
    ended = parse_time(small(call.get("endedAt"))) or parse_time(small(call.get("updatedAt")))
    if ended is not None:
        report["timestamp"] = round(ended * 1000)
    for name in REPORT_FIELDS:
        if present(call.get(name)):
            report[name] = call[name]
    if (artifact := fields_of(call.get("artifact"))) is not None:
        report["artifact"] = recording_urls(artifact)
    for name in PARTIES:
        if is_object(call.get(name)):
            report[name] = call[name]
    report["call"] = {name: value for name, value in call.items() if name not in REPORT_FIELDS}
    return report


def webhook_body(call: Fields) -> bytes:
    """The end-of-call-report webhook's body for this call object."""
    return jsonbody.dumps({"message": end_of_call_report(call)})


def listed_call(item: msgspec.Raw) -> ListedCall | None:
    """A call object from the listing; None when it has no id to name it by."""
    call = fields_of(item)
    call_id = small(call.get("id")) if call is not None else None
    if call is None or not call_id:
        return None
    return ListedCall(call_id, small(call.get("status")) == "ended", call)


# --- paging ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The `createdAt` side of the window still to list. VAPI lists newest first, so
    the rest lies at or before the oldest call a page held (`op` "Le"); a server listing
    oldest first is followed the other way ("Ge"). "Lt"/"Gt" step past an instant that
    holds more calls than a page."""

    op: str  # Le, Lt, Ge or Gt
    at: str  # as VAPI wrote it

    @property
    def token(self) -> str:
        return f"{self.op}:{self.at}"

    @classmethod
    def parse(cls, token: str) -> Bound:
        op, _, at = token.partition(":")
        if op not in ("Le", "Lt", "Ge", "Gt") or parse_time(at) is None:
            raise ValueError(f"not a VAPI paging token: {token!r}")
        return cls(op, at)


def query(window: Window, bound: Bound | None, limit: int = PAGE_LIMIT) -> dict[str, Any]:
    """`GET /call`'s parameters for one page. The window widens to whole milliseconds:
    a call listed twice costs nothing, one left out is the whole point."""
    params: dict[str, Any] = {"limit": limit,
                              "updatedAtGe": iso(math.floor(window.start * 1000) / 1000, milliseconds=True),
                              "updatedAtLt": iso(math.ceil(window.end * 1000) / 1000, milliseconds=True)}
    if bound is not None:
        params[f"createdAt{bound.op}"] = bound.at
    return params


def is_short(count: int, fresh: int, asked: int, largest_before: int) -> bool:
    """Whether a page of `count` calls, `fresh` of them not in the page before, holds the
    rest of the window: nothing new, or fewer calls than asked and than a page this pass
    already got (a first page below `limit` may be a server's cap)."""
    return fresh == 0 or (count < asked and count < largest_before)


def next_bound(created: Sequence[str | None], bound: Bound | None) -> Bound:
    """Where the next page starts after a page that may not be the last, given its
    calls' `createdAt` in the order listed: at its oldest call (which comes back, with
    any other call of that millisecond)."""
    times = [(t, at) for at in created if at is not None and (t := parse_time(at)) is not None]
    if not times:
        raise ProviderApiError("VAPI listed calls without a createdAt, so the relay cannot page past them")
    newest_first = bound is None or bound.op in ("Le", "Lt")
    if times[0][0] != times[-1][0]:
        newest_first = times[0][0] > times[-1][0]
    edge = min(times) if newest_first else max(times)
    if len(created) > 1 and min(times)[0] == max(times)[0]:
        # Every call of the page in one millisecond: starting there again would bring the
        # same page back, so the next starts after it.
        log.warning("reconcile_instant_overfull", provider="vapi", created_at=edge[1], calls=len(created),
                    consequence="calls created in that millisecond beyond one page may be missed")
        return Bound("Lt" if newest_first else "Gt", edge[1])
    return Bound("Le" if newest_first else "Ge", edge[1])


@dataclass
class _Paging:
    """How far a listing of one window got."""

    bound: Bound | None
    limit: int = PAGE_LIMIT  # halved for the rest of the window when a page is too large
    largest: int = 0
    repeated: set[str] = field(default_factory=set)  # calls at the edge of the last page come back
    done: bool = False


class VapiCalls(CallSource):
    event = "end-of-call-report"

    async def pages(self, api: Api, window: Window, token: str | None) -> AsyncGenerator[Page, None]:
        paging = _Paging(Bound.parse(token) if token else None)
        while not paging.done:
            # Yielded without a name: no page outlives the request for the next one.
            yield await self._page(api, window, paging)

    async def _page(self, api: Api, window: Window, paging: _Paging) -> Page:
        answer, paging.limit = await fitting(
            lambda limit: api.get("/call", query(window, paging.bound, limit), into=list[msgspec.Raw]),
            paging.limit, "vapi")
        listed = [call for item in answer if (call := listed_call(item)) is not None]
        fresh = [call for call in listed if call.call_id not in paging.repeated]
        if is_short(len(answer), len(fresh), paging.limit, paging.largest):
            paging.done = True
            return Page(fresh, None)
        paging.largest = max(paging.largest, len(answer))
        created = [(call.call_id, small((call.fields or {}).get("createdAt"))) for call in listed]
        paging.bound = next_bound([at for _, at in created], paging.bound)
        paging.repeated = {call_id for call_id, at in created if at == paging.bound.at}
        return Page(fresh, paging.bound.token)

    async def webhook(self, api: Api, call: ListedCall) -> bytes | None:
        return webhook_body(call.fields or {})  # VAPI lists calls whole: there is nothing to fetch
