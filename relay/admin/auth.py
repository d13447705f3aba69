"""Who may use the status page and admin API: the admin token, sessions and CSRF.

- Scripts send `Authorization: Bearer <RELAY_ADMIN_TOKEN>`; it works on the page and the
  API. The API accepts nothing else, so a browser's cookie can never drive it (no CSRF).
- People log in once with the token and get a session cookie. The cookie is not the
  token: it is a random nonce and the time it was issued, signed with the token
  (itsdangerous), valid for 12 hours. Rotating the token therefore logs everyone out.
  Logging out is recorded in the outbox's database, so it holds after a restart and on
  every instance.
- Every form carries a CSRF token, the session's signature under another salt; forms
  posted with a session must carry it. The login form, which has no session yet, is
  tied to a short-lived login cookie the same way.

All comparisons of secrets are constant-time; nothing here logs or echoes a token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadData, Signer, TimestampSigner, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from relay.core.envvars import Secret
from relay.core.errors import Forbidden, StoreUnavailable, Unauthorized
from relay.outbox import AsyncOutbox
from relay.web.requests import store_unavailable

SESSION_COOKIE = "__Host-relay_session"  # __Host-: Secure, Path=/, no Domain, by rule
LOGIN_COOKIE = "__Host-relay_login"
SESSION_SECONDS = 12 * 3600
LOGIN_FORM_SECONDS = 3600
CLOCK_SKEW_SECONDS = 60

SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="roark-relay admin"'}


@dataclass(frozen=True)
class Access:
    """An authenticated request: by `bearer` header or by `session` cookie."""

    via: str
    session: str | None
    csrf: str  # what this request's forms must send back


@dataclass(frozen=True)
class Session:
    """A session cookie this relay signed: its nonce (what logging out records) and when
    it was issued."""

    nonce: str
    issued: float


class Signed:
    """What the admin token signs (itsdangerous, as Starlette's own sessions do): session
    cookies, with when they were issued; their CSRF tokens; the login form's."""

    def __init__(self, token: Secret, clock: Callable[[], float] = time.time) -> None:
        key = token.reveal()
        # itsdangerous reads the time through this method: the injected clock, for tests.
        clocked = type("ClockedSigner", (TimestampSigner,), {"get_timestamp": lambda _signer: int(clock())})
        self._sessions = URLSafeTimedSerializer(key, salt="relay admin session", signer=clocked)
        self._csrf = Signer(key, salt="relay admin csrf")
        self._login = Signer(key, salt="relay admin login form")
        self._clock = clock

    def new_session(self) -> str:
        return str(self._sessions.dumps(secrets.token_urlsafe(16)))

    def session(self, value: str) -> Session | None:
        """The session `value` is, if this token signed it and it has not expired; whether
        it was logged out is the store's to say."""
        try:
            nonce, issued = self._sessions.loads(value, return_timestamp=True)
        except BadData:
            return None
        age = self._clock() - issued.timestamp()
        if not isinstance(nonce, str) or not -CLOCK_SKEW_SECONDS <= age < SESSION_SECONDS:
            return None
        return Session(nonce, issued.timestamp())

    def csrf(self, value: str) -> str:
        """The CSRF token of the forms of a session (or of Bearer requests)."""
        return self._csrf.get_signature(value).decode()

    def new_login_form(self) -> tuple[str, str]:
        """A login cookie value and the CSRF token the login form must carry with it."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._login.get_signature(nonce).decode()

    def login_form_matches(self, nonce: str, supplied: str) -> bool:
        return bool(self._login.verify_signature(nonce, supplied))


class AdminAuth:
    """`outbox` keeps which sessions were logged out."""

    def __init__(self, token: Secret, outbox: AsyncOutbox, clock: Callable[[], float] = time.time) -> None:
        self._digest = hashlib.sha256(token.reveal().encode()).digest()
        self.signed = Signed(token, clock)
        self._outbox = outbox
        self._clock = clock

    # --- the token itself ---------------------------------------------------------

    def token_matches(self, candidate: str) -> bool:
        # Hashing first makes the comparison constant-time in the length too.
        given = hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(given, self._digest)

    def bearer(self, request: Request) -> bool | None:
        """True for the right Bearer token, False for a wrong one, None when absent."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def require_bearer(self, request: Request) -> None:
        """The API's check: a Bearer header with the admin token, nothing else."""
        if not self.bearer(request):
            raise Unauthorized(
                "send the admin token as 'Authorization: Bearer <RELAY_ADMIN_TOKEN>'",
                headers=dict(BEARER_CHALLENGE),
            )

    # --- sessions -----------------------------------------------------------------

    def new_session(self) -> str:
        return self.signed.new_session()

    async def revoke(self, value: str) -> None:
        """Log a valid session out everywhere, until it would have expired anyway."""
        session = self.signed.session(value)
        if session is None:
            return
        try:
            await self._outbox.revoke_session(session.nonce, session.issued + SESSION_SECONDS, self._clock())
        except StoreUnavailable:
            raise store_unavailable("logging out needs the outbox database; try again shortly") from None

    async def authenticate(self, request: Request) -> Access | None:
        """The page's check: a Bearer header, else a valid session cookie not logged out.

        A wrong Bearer header is a refusal even with a valid cookie: the caller said who
        it was, and was wrong. The answer is kept for the rest of the request, so a page
        asks the store once (and its error page never has to ask again)."""
        if not hasattr(request.state, "admin_access"):
            request.state.admin_access = await self._access(request)
        access: Access | None = request.state.admin_access
        return access

    async def _access(self, request: Request) -> Access | None:
        bearer = self.bearer(request)
        if bearer is not None:
            return Access("bearer", None, self.signed.csrf("bearer")) if bearer else None
        value = request.cookies.get(SESSION_COOKIE)
        session = self.signed.session(value) if value else None
        if value is None or session is None:
            return None
        try:
            revoked = await self._outbox.session_revoked(session.nonce, self._clock())
        except StoreUnavailable:
            # Closed, not open: without the store nobody can tell a logged-out cookie.
            raise store_unavailable("the status page needs the outbox database; try again shortly") from None
        return None if revoked else Access("session", value, self.signed.csrf(value))

    @staticmethod
    def known_access(request: Request) -> Access | None:
        """What `authenticate` already found for this request, if it was asked."""
        return getattr(request.state, "admin_access", None)

    def check_csrf(self, access: Access, supplied: str | None) -> None:
        """Forms posted with a session cookie must carry its CSRF token. A Bearer header is
        never sent by a browser on its own, so Bearer requests need none."""
        if access.via == "bearer":
            return
        if not supplied or not hmac.compare_digest(access.csrf.encode(), supplied.encode("utf-8", "replace")):
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page and try again",
                            error_code="csrf_failed")

    def set_session(self, response: Response, session: str) -> None:
        response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_SECONDS, path="/",
                            secure=True, httponly=True, samesite="strict")

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")

    # --- the login form's CSRF (no session yet) ---------------------------------------

    def new_login_form(self) -> tuple[str, str]:
        """A login cookie value and the CSRF token the login form must carry with it."""
        return self.signed.new_login_form()

    def set_login_cookie(self, response: Response, nonce: str) -> None:
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_FORM_SECONDS, path="/",
                            secure=True, httponly=True, samesite="strict")

    def check_login_csrf(self, request: Request, supplied: str | None) -> None:
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or not supplied or not self.signed.login_form_matches(nonce, supplied):
            raise Forbidden("the login form expired or did not come from this relay; try again",
                            error_code="csrf_failed")

    def clear_login_form(self, response: Response) -> None:
        response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def safe_next(value: str | None) -> str:
    """Where to go after logging in: only somewhere on the status page, never off-site."""
    if (
        value
        and len(value) <= 2000
        and value.isascii()
        and value.isprintable()
        and (value == "/status" or value.startswith(("/status/", "/status?")))
        and "\\" not in value
        and "//" not in value
    ):
        return value
    return "/status"
