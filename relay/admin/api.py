"""The admin JSON API: summary, list, inspect and replay deliveries; alerts.

Only `Authorization: Bearer <RELAY_ADMIN_TOKEN>` is accepted here (never the page's
cookie), so no request a browser makes on its own can reach it. Every input is
validated; refusals are ErrorResponse JSON. The parsing and serialising helpers are
shared with the status page, so both show and accept exactly the same things.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.routing import Route

from relay.admin.auth import AdminAuth
from relay.admin.operations import STATES, Operations
from relay.admin.views import attempt_json, delivery_json, masked_payload, result_json
from relay.core import jsonbody
from relay.core.errors import BadRequest, HTTPError, NotFound, UnsupportedMediaType
from relay.core.names import DESTINATION_NAME
from relay.core.redaction import Redactor
from relay.destinations import CLASSIFICATIONS, RESULT_KINDS
from relay.outbox import DeliveryFilter, State
from relay.providers import PROVIDER_NAMES
from relay.web.bodies import read_body
from relay.web.responses import JSONResponse

log = structlog.get_logger("relay.admin")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_IDS = 500  # per replay request
MAX_ID = 2**63 - 1
MAX_CALL_ID = 256
MAX_JSON_BODY = 64 * 1024
#: A view, not a state: pending deliveries whose every attempt so far failed.
RETRYING = "retrying"


def state_selection(names: Sequence[str]) -> tuple[tuple[State, ...], bool]:
    """The states, and whether only deliveries tried at least once, that state names
    select (none: every state); RETRYING selects the pending ones tried at least once."""
    if RETRYING in names:
        return (State.PENDING,), True
    return tuple(State(name) for name in names), False

_DIGITS = re.compile(r"[0-9]{1,19}")
# Written so that Python's re and the JSON Schema (ECMA-262) pattern in the admin
# OpenAPI document read them alike. A cursor is an id below 10**18, so that a pattern
# alone says which cursors are valid (ids never get near that many).
CURSOR_PATTERN = r"^([1-9][0-9]{0,17})?$"
#: What RELAY_DESTINATIONS allows as a name, plus Roark's.
DESTINATION_PATTERN = f"^{DESTINATION_NAME}$"
# Any text but control characters. (Lone surrogates, which no database column takes,
# never get this far: the body parser refuses them, and a query string cannot carry one.)
CALL_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


# --- validation ---------------------------------------------------------------------

def parse_id(raw: object, parameter: str) -> int:
    """A delivery id (or cursor): a positive integer the database can hold."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and _DIGITS.fullmatch(raw):
        value = int(raw)
    else:
        raise BadRequest(f"{parameter} must be a positive integer", parameter=parameter)
    if not 1 <= value <= MAX_ID:
        raise BadRequest(f"{parameter} must be between 1 and {MAX_ID}", parameter=parameter)
    return value


def parse_provider(raw: object) -> str | None:
    """A provider filter; absent or empty means any."""
    if raw is None or raw == "":
        return None
    if raw not in PROVIDER_NAMES:
        raise BadRequest(f"provider must be one of {', '.join(PROVIDER_NAMES)}", parameter="provider")
    return str(raw)


def parse_destination(raw: object) -> str | None:
    """A destination filter (roark, or a name that RELAY_DESTINATIONS has or had); absent
    or empty means any."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not re.fullmatch(DESTINATION_PATTERN, raw):
        raise BadRequest("destination must be roark or a destination's name", parameter="destination")
    return raw


def parse_call_id(raw: object) -> str | None:
    """A call id or its beginning (the search is a prefix match); absent or blank means any."""
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > MAX_CALL_ID or not re.fullmatch(CALL_ID_PATTERN, raw):
        raise BadRequest(f"call_id must be text of at most {MAX_CALL_ID} characters, "
                         "without control characters", parameter="call_id")
    return raw.strip() or None


@dataclass(frozen=True)
class Listing:
    where: DeliveryFilter
    state: str  # a state, RETRYING, or "all"
    before_id: int | None
    limit: int


def parse_classification(raw: object) -> str | None:
    """An evaluation's classification to filter on (relay.results); empty means any."""
    if raw in (None, ""):
        return None
    if raw not in CLASSIFICATIONS:
        raise BadRequest(f"classification must be one of {', '.join(CLASSIFICATIONS)}", parameter="classification")
    return str(raw)


def _single(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} may be given once", parameter=name)
    return values[0] if values else None


def refuse_unknown(params: QueryParams, known: Collection[str]) -> None:
    """Anything but `known` is refused: a typo such as `status=failed` must not silently
    list everything."""
    unknown = sorted(set(params.keys()) - set(known))
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}", parameter=unknown[0])


def parse_page(params: QueryParams) -> tuple[int | None, int]:
    """cursor and limit: the id to list below (None: from the newest), and how many."""
    cursor = _single(params, "cursor")
    if cursor is not None and not re.fullmatch(CURSOR_PATTERN, cursor):
        raise BadRequest("cursor must be the next_cursor of a previous page", parameter="cursor")
    limit = _single(params, "limit")
    if limit is not None and not (_DIGITS.fullmatch(limit) and 1 <= int(limit) <= MAX_LIMIT):
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", parameter="limit")
    return parse_id(cursor, "cursor") if cursor else None, DEFAULT_LIMIT if limit is None else int(limit)


def parse_listing(params: QueryParams, *, default_state: str, extra: tuple[str, ...] = ()) -> Listing:
    """state, provider, destination, call_id, classification, cursor, limit; anything
    else is refused."""
    refuse_unknown(params, ("state", "provider", "destination", "call_id", "classification", "cursor", "limit",
                            *extra))
    state = _single(params, "state") or default_state
    if state not in (*STATES, RETRYING, "all"):
        raise BadRequest(f"state must be one of {', '.join(STATES)}, {RETRYING} or all", parameter="state")
    before_id, limit = parse_page(params)
    states, tried = state_selection(() if state == "all" else (state,))
    return Listing(
        where=DeliveryFilter(
            states=states,
            tried=tried,
            provider=parse_provider(_single(params, "provider")),
            destination=parse_destination(_single(params, "destination")),
            call_id_prefix=parse_call_id(_single(params, "call_id")),
            classification=parse_classification(_single(params, "classification")),
        ),
        state=state,
        before_id=before_id,
        limit=limit,
    )


# --- endpoints ----------------------------------------------------------------------

class AdminApi:
    """`body_timeout`: how long a request body may take to arrive (RELAY_BODY_TIMEOUT_SECONDS)."""

    def __init__(self, auth: AdminAuth, redactor: Redactor, operations: Operations, body_timeout: float) -> None:
        self.auth = auth
        self.redactor = redactor
        self.operations = operations
        self.body_timeout = body_timeout

    async def _json_body(self, request: Request) -> Mapping[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        try:
            body = await read_body(request, MAX_JSON_BODY, self.body_timeout)
        except HTTPError as error:
            log.info("admin_request_rejected", path=request.url.path, reason=error.message)
            raise
        return jsonbody.parse(body)

    async def get_summary(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        return JSONResponse({"data": await self.operations.summary()})

    async def list_deliveries(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        listing = parse_listing(request.query_params, default_state="all")
        page, next_cursor = await self.operations.page(listing.where, listing.before_id, listing.limit)
        return JSONResponse({"data": [delivery_json(d) for d in page], "next_cursor": next_cursor})

    async def get_delivery(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        delivery_id = parse_id(request.path_params["id"], "id")
        found = await self.operations.delivery(delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id}", parameter="id")
        delivery, attempts = found
        payload, note = masked_payload(delivery.body, self.redactor)
        results = await self.operations.verdicts([delivery_id])
        data = {**delivery_json(delivery), "attempt_history": [attempt_json(a) for a in attempts],
                "payload": payload, "payload_note": note,
                "results": [result_json(r, self.redactor) for r in results.get(delivery_id, {}).values()]}
        return JSONResponse({"data": data})

    async def list_results(self, request: Request) -> JSONResponse:
        """Roark's verdicts, newest delivery first: ?kind=&classification=&since=&cursor=&limit="""
        self.auth.require_bearer(request)
        params = request.query_params
        refuse_unknown(params, ("kind", "classification", "since", "cursor", "limit"))
        kind = _single(params, "kind") or None
        if kind is not None and kind not in RESULT_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(RESULT_KINDS)}", parameter="kind")
        since = _single(params, "since")
        try:
            parsed = datetime.fromisoformat(since) if since else None
        except ValueError:
            parsed = None
        if since and (parsed is None or parsed.tzinfo is None):
            raise BadRequest("since must be an ISO 8601 time with its offset, e.g. 2026-12-08T09:00:00Z",
                             parameter="since")
        since_at = None if parsed is None else parsed.timestamp()
        before_id, limit = parse_page(params)
        page, next_cursor = await self.operations.results(
            kind, parse_classification(_single(params, "classification")), since_at, before_id, limit)
        return JSONResponse({"data": [result_json(r) for r in page], "next_cursor": next_cursor})

    async def replay_one(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        delivery_id = parse_id(request.path_params["id"], "id")
        if not await self.operations.exists(delivery_id):
            raise NotFound(f"no delivery {delivery_id}", parameter="id")
        return JSONResponse({"data": await self.operations.replay([delivery_id], DeliveryFilter())})

    async def replay_many(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        document = await self._json_body(request)
        unknown = set(document) - {"ids", "all_failed", "provider", "destination", "call_id"}
        if unknown:
            raise BadRequest(f"unknown field {sorted(unknown)[0]!r}", parameter=sorted(unknown)[0])
        if ("ids" in document) == ("all_failed" in document):
            raise BadRequest('give either "ids": [...] or "all_failed": true')
        if "ids" in document:
            if {"provider", "destination", "call_id"} & set(document):
                raise BadRequest("provider, destination and call_id filter all_failed; with ids, leave them out")
            raw = document["ids"]
            # 1.0 is an integer to JSON (and to the document's schema), true is not.
            if (not isinstance(raw, list) or not 1 <= len(raw) <= MAX_IDS
                    or not all(type(value) is int or (type(value) is float and value.is_integer())
                               for value in raw)):
                raise BadRequest(f"ids must be a list of 1 to {MAX_IDS} delivery ids", parameter="ids")
            ids = sorted({parse_id(int(value), "ids") for value in raw})
            return JSONResponse({"data": await self.operations.replay(ids, DeliveryFilter())})
        if document["all_failed"] is not True:
            raise BadRequest("all_failed must be true", parameter="all_failed")
        for name in ("provider", "destination", "call_id"):
            if name in document and document[name] is None:
                raise BadRequest(f"{name} may not be null; leave it out to match any", parameter=name)
        where = DeliveryFilter(
            states=(State.FAILED,),
            provider=parse_provider(document.get("provider")),
            destination=parse_destination(document.get("destination")),
            call_id_prefix=parse_call_id(document.get("call_id")),
        )
        return JSONResponse({"data": await self.operations.replay(None, where)})

    async def list_alerts(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        refuse_unknown(request.query_params, ())
        return JSONResponse({"data": await self.operations.alerts()})

    async def acknowledge_alert(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        alert_id = parse_id(request.path_params["id"], "id")
        alert = await self.operations.acknowledge(alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id}", parameter="id")
        return JSONResponse({"data": alert})

    async def resume_destination(self, request: Request) -> JSONResponse:
        self.auth.require_bearer(request)
        name = parse_destination(request.path_params["name"])
        assert name is not None  # a path parameter is never empty
        return JSONResponse({"data": await self.operations.resume(name)})


def api_routes(api: AdminApi) -> list[Route]:
    return [
        Route("/admin/api/summary", api.get_summary, methods=["GET"]),
        Route("/admin/api/deliveries", api.list_deliveries, methods=["GET"]),
        Route("/admin/api/deliveries/{id}", api.get_delivery, methods=["GET"]),
        Route("/admin/api/deliveries/{id}/replay", api.replay_one, methods=["POST"]),
        Route("/admin/api/replay", api.replay_many, methods=["POST"]),
        Route("/admin/api/destinations/{name}/resume", api.resume_destination, methods=["POST"]),
        Route("/admin/api/results", api.list_results, methods=["GET"]),
        Route("/admin/api/alerts", api.list_alerts, methods=["GET"]),
        Route("/admin/api/alerts/{id}/acknowledge", api.acknowledge_alert, methods=["POST"]),
    ]
