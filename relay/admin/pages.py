"""The status page: server-rendered HTML for people (and for scripts with a Bearer header).

Templates autoescape everything; payloads, call ids and upstream errors are attacker-
controlled text and are only ever rendered as text. No scripts are served at all, and
the Content-Security-Policy forbids them anyway.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from relay.admin import api, charts
from relay.admin.auth import BEARER_CHALLENGE, Access, AdminAuth, safe_next
from relay.admin.operations import STATES, Operations
from relay.admin.throttle import LoginThrottle
from relay.admin.views import masked_payload
from relay.core.errors import BadRequest, HTTPError, NotFound, TooManyRequests, Unauthorized
from relay.core.names import DESTINATION_NAME
from relay.core.redaction import Redactor
from relay.core.timefmt import duration, iso
from relay.outbox import DeliveryFilter, State
from relay.providers import PROVIDER_NAMES

PAGE_SIZE = 50
MAX_PAYLOAD_CHARS = 1_000_000  # a 25 MB transcript is not read in a browser
OUTCOMES = {"delivered": "delivered", "retryat": "will retry", "giveup": "gave up",
            "pausedelivery": "paused (not counted)", "stopreceiver": "gone: destination stopped"}
Handler = Callable[[Request], Awaitable[Response]]
#: What an alert's subject may be: a destination's name, a provider, forwarding, outbox.
SUBJECT = re.compile(DESTINATION_NAME)


def ago(timestamp: float | None, now: float) -> str:
    """'3 min ago' or 'in 20 s'."""
    if timestamp is None:
        return ""
    return f"{duration(now - timestamp)} ago" if now >= timestamp else f"in {duration(now - timestamp)}"


def condition(destination: dict[str, Any]) -> str:
    """A destination's state in one word (its badge), from what `Operations.destinations`
    says holds it back."""
    if destination["stopped"]:
        return "stopped"
    if destination["paused"]:
        return "paused"
    return "failing" if destination["trouble"] else "running"


def lasted(alert: dict[str, Any]) -> str:
    """How long a resolved alert (as `alert_json` shows it) was open."""
    opened, resolved = (datetime.fromisoformat(alert[k]) for k in ("opened_at", "resolved_at"))
    return duration((resolved - opened).total_seconds())


def pretty(payload: Any) -> str:
    try:
        text = json.dumps(payload, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return "(nested too deeply to show)"
    if len(text) > MAX_PAYLOAD_CHARS:
        return text[:MAX_PAYLOAD_CHARS] + f"\n… (cut at {MAX_PAYLOAD_CHARS} characters; the API has it all)"
    return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["iso"] = lambda ts: iso(ts) or "—"
    env.globals.update(ago=ago, duration=duration, states=STATES, providers=PROVIDER_NAMES, outcomes=OUTCOMES,
                       condition=condition, lasted=lasted, pretty=pretty)
    env.tests["running"] = lambda destination: condition(destination) == "running"
    return env


def _status_url(**params: object) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return "/status" + (f"?{urlencode(kept)}" if kept else "")


def _flash(request: Request) -> int | None:
    raw = request.query_params.get("replayed", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 7 else None


class StatusPages:
    def __init__(self, auth: AdminAuth, redactor: Redactor, throttle: LoginThrottle, operations: Operations) -> None:
        self.auth = auth
        self.redactor = redactor
        self.throttle = throttle
        self.operations = operations
        self.templates = Jinja2Templates(env=_environment())

    def render(self, request: Request, name: str, context: dict[str, Any], *,
               access: Access | None = None, status_code: int = 200) -> Response:
        context = {"access": access, "csrf": access.csrf if access else "", "now": time.time(), **context}
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def html_errors(self, handler: Handler) -> Handler:
        """Refusals on the page are HTML pages (with the same status) instead of JSON."""
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPError as error:
                response = self.render(request, "error.html", {"error": error}, status_code=error.status_code,
                                       access=self.auth.known_access(request))
                response.headers.update(error.headers)
                return response
        return endpoint

    async def _require(self, request: Request) -> Access:
        access = await self.auth.authenticate(request)
        if access is None:
            raise Unauthorized("log in first", headers=dict(BEARER_CHALLENGE))
        return access

    async def _to_login(self, request: Request) -> Response | None:
        """A person without credentials asking for a page is sent to log in first."""
        if await self.auth.authenticate(request) is None and "authorization" not in request.headers:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        return None

    # --- pages ----------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        if redirect := await self._to_login(request):
            return redirect
        access = await self._require(request)
        listing = api.parse_listing(request.query_params, default_state="failed",
                                    extra=("replayed", "nothing_selected", "resumed"))
        listing = api.Listing(listing.where, listing.state, listing.before_id, min(listing.limit, PAGE_SIZE))
        page, next_cursor = await self.operations.page(listing.where, listing.before_id, listing.limit)
        filters = {"state": listing.state, "provider": listing.where.provider or "",
                   "destination": listing.where.destination or "", "call_id": listing.where.call_id_prefix or "",
                   "classification": listing.where.classification or ""}
        return self.render(request, "status.html", {
            "summary": await self.operations.summary(),
            "alerts": await self.operations.alerts(),
            "mute_seconds": self.operations.mute_seconds,
            "reconciliation": await self.operations.reconciliations(),
            "rows": page,
            "verdicts": await self.operations.verdicts([d.id for d in page if d.destination == "roark"]),
            "results_enabled": self.operations.results_enabled,
            "filters": filters,
            "older_url": _status_url(**filters, cursor=next_cursor) if next_cursor else None,
            "newest_url": _status_url(**filters) if listing.before_id else None,
            "replayed": _flash(request),
            "nothing_selected": request.query_params.get("nothing_selected") == "1",
            "resumed": api.parse_destination(request.query_params.get("resumed")),
            "traffic": await self._traffic(listing.where.destination),
        }, access=access)

    async def detail(self, request: Request) -> Response:
        if redirect := await self._to_login(request):
            return redirect
        access = await self._require(request)
        unknown = set(request.query_params.keys()) - {"replayed"}
        if unknown:
            raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}")
        delivery_id = api.parse_id(request.path_params["id"], "id")
        found = await self.operations.delivery(delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id}")
        delivery, attempts = found
        payload, note = masked_payload(delivery.body, self.redactor)
        verdicts = (await self.operations.verdicts([delivery_id])).get(delivery_id, {})
        return self.render(request, "detail.html", {
            "d": delivery,
            "verdicts": {kind: (result, self.redactor.mask(result.data)) for kind, result in sorted(verdicts.items())},
            "attempts": attempts,
            "payload": None if note else pretty(payload),
            "payload_note": note,
            "replayable": delivery.state in (State.FAILED, State.PENDING),
            "replayed": _flash(request),
        }, access=access)

    async def replay(self, request: Request) -> Response:
        access = await self._require(request)
        form = await _form(request, max_fields=api.MAX_IDS + 10)
        self.auth.check_csrf(access, _field(form, "csrf_token"))
        action = _field(form, "action")
        if action == "selected":
            raw_ids = form.getlist("ids")
            if len(raw_ids) > api.MAX_IDS:
                raise BadRequest(f"select at most {api.MAX_IDS} deliveries at a time", parameter="ids")
            ids = sorted({api.parse_id(value, "ids") for value in raw_ids})
            if not ids:
                return RedirectResponse(_status_url(state=_field(form, "state") or "failed",
                                                    nothing_selected=1), status_code=303)
            result = await self.operations.replay(ids, DeliveryFilter())
        elif action == "all_failed":
            where = DeliveryFilter(states=(State.FAILED,),
                                   provider=api.parse_provider(_field(form, "provider")),
                                   destination=api.parse_destination(_field(form, "destination")),
                                   call_id_prefix=api.parse_call_id(_field(form, "call_id")))
            result = await self.operations.replay(None, where)
        else:
            raise BadRequest("action must be selected or all_failed", parameter="action")
        count = len(result["replayed"])
        if detail_id := _field(form, "detail_id"):
            return RedirectResponse(
                f"/status/deliveries/{api.parse_id(detail_id, 'detail_id')}?replayed={count}", status_code=303)
        state = _field(form, "state") or "failed"
        if state not in (*STATES, api.RETRYING, "all"):
            state = "failed"
        return RedirectResponse(_status_url(state=state, provider=api.parse_provider(_field(form, "provider")),
                                            destination=api.parse_destination(_field(form, "destination")),
                                            call_id=api.parse_call_id(_field(form, "call_id")),
                                            replayed=count), status_code=303)

    async def resume(self, request: Request) -> Response:
        access = await self._require(request)
        form = await _form(request, max_fields=10)
        self.auth.check_csrf(access, _field(form, "csrf_token"))
        name = api.parse_destination(request.path_params["name"])
        assert name is not None  # a path parameter is never empty
        await self.operations.resume(name)
        return RedirectResponse(_status_url(resumed=name), status_code=303)

    async def acknowledge(self, request: Request) -> Response:
        access = await self._require(request)
        form = await _form(request, max_fields=10)
        self.auth.check_csrf(access, _field(form, "csrf_token"))
        alert_id = api.parse_id(request.path_params["id"], "id")
        if await self.operations.acknowledge(alert_id) is None:
            raise NotFound(f"no alert {alert_id}")
        return RedirectResponse(f"/status#alert-{alert_id}", status_code=303)

    async def mute(self, request: Request) -> Response:
        access = await self._require(request)
        form = await _form(request, max_fields=10)
        self.auth.check_csrf(access, _field(form, "csrf_token"))
        subject = _field(form, "subject") or ""
        if not SUBJECT.fullmatch(subject):
            raise BadRequest("subject must be what an alert names (roark, a destination, a provider)",
                             parameter="subject")
        await self.operations.mute(subject)
        return RedirectResponse("/status#alerts", status_code=303)

    # --- logging in and out -----------------------------------------------------------

    def _login_form(self, request: Request, next_url: str, *, error: HTTPError | None = None) -> Response:
        nonce, csrf = self.auth.new_login_form()
        response = self.render(request, "login.html",
                               {"login_csrf": csrf, "next": next_url, "message": error.message if error else None},
                               status_code=error.status_code if error else 200)
        response.headers.update(error.headers if error else {})
        self.auth.set_login_cookie(response, nonce)
        return response

    async def login_page(self, request: Request) -> Response:
        next_url = safe_next(request.query_params.get("next"))
        if await self.auth.authenticate(request) is not None:
            return RedirectResponse(next_url, status_code=303)
        return self._login_form(request, next_url)

    async def login(self, request: Request) -> Response:
        form = await _form(request, max_fields=10)
        next_url = safe_next(_field(form, "next"))
        client = request.client.host if request.client else ""
        try:
            self.auth.check_login_csrf(request, _field(form, "csrf_token"))
            # The right token always gets in: at 64 bits or more (RELAY_ADMIN_TOKEN's rule)
            # no rate of guessing finds it, and refusing it let anyone lock the operator
            # out with a few wrong logins a second.
            if not self.auth.token_matches(_field(form, "token") or ""):
                if wait := self.throttle.wait(client):
                    raise TooManyRequests("Too many failed logins; try again later.",
                                          retry_after_seconds=math.ceil(wait))
                self.throttle.failed(client)
                raise Unauthorized("That token was not accepted.")
        except HTTPError as error:
            return self._login_form(request, next_url, error=error)
        response = RedirectResponse(next_url, status_code=303)
        self.auth.set_session(response, self.auth.new_session())
        self.auth.clear_login_form(response)
        return response

    async def logout(self, request: Request) -> Response:
        """Only the session's own form logs it out. Anything else (a cross-site form,
        which arrives without the SameSite=Strict cookie) changes no cookie: deleting
        it would let any site log an operator out."""
        access = await self.auth.authenticate(request)
        if access is None or access.session is None:
            return RedirectResponse("/login", status_code=303)
        form = await _form(request, max_fields=10)
        self.auth.check_csrf(access, _field(form, "csrf_token"))
        await self.auth.revoke(access.session)
        response = RedirectResponse("/login", status_code=303)
        self.auth.clear_session(response)
        return response

    async def _traffic(self, destination: str | None) -> list[charts.Panel]:
        minutes = await self.operations.traffic(*charts.MINUTES, destination)
        hours = await self.operations.traffic(*charts.HOURS, destination)
        # Drawing is slow (BENCHMARKS.md): off the loop that receives webhooks.
        return await asyncio.to_thread(charts.panels, minutes, hours)

    async def status_slash(self, request: Request) -> Response:
        """/status/ is /status. Relative, like every redirect here: an absolute one would
        be built from the request's Host header, which the client chooses."""
        return RedirectResponse("/status" + (f"?{request.url.query}" if request.url.query else ""),
                                status_code=307)


async def _form(request: Request, *, max_fields: int) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=max_fields, max_part_size=64 * 1024)
    except Exception as error:  # python-multipart's and Starlette's parse errors
        if isinstance(error, HTTPError):
            raise
        raise BadRequest("the form could not be read") from None


def _field(form: FormData, name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} may be given once", parameter=name)
    value = values[0] if values else None
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be text", parameter=name)
    return value


def page_routes(pages: StatusPages) -> list[Route]:
    wrap = pages.html_errors
    return [
        Route("/status", wrap(pages.status), methods=["GET"]),
        Route("/status/", pages.status_slash, methods=["GET"]),
        Route("/status/deliveries/{id}", wrap(pages.detail), methods=["GET"]),
        Route("/status/replay", wrap(pages.replay), methods=["POST"]),
        Route("/status/destinations/{name}/resume", wrap(pages.resume), methods=["POST"]),
        Route("/status/alerts/{id}/acknowledge", wrap(pages.acknowledge), methods=["POST"]),
        Route("/status/alerts/mute", wrap(pages.mute), methods=["POST"]),
        Route("/login", wrap(pages.login_page), methods=["GET"]),
        Route("/login", wrap(pages.login), methods=["POST"]),
        Route("/logout", wrap(pages.logout), methods=["POST"]),
    ]
