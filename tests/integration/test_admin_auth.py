"""Who gets in to the status page and admin API, and what the page shows them.

Refusals: disabled without RELAY_ADMIN_TOKEN, no or wrong token, cookie on the API,
missing or foreign CSRF tokens, open redirects, forged Host headers, guessing, expired,
tampered, rotated or logged-out sessions (across restarts too). Showing: attacker-
controlled text is escaped, secrets are masked.
"""

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from relay.admin.auth import SESSION_COOKIE, SESSION_SECONDS, Signed
from relay.admin.throttle import FAILURES_OVERALL, FAILURES_PER_CLIENT, LoginThrottle
from relay.http.app import create_app
from relay.settings import Secret, Settings
from relay.testing.behaviours import Accept, Respond
from tests.helpers import eventually, retell_headers, vapi_headers, with_call_id

TOKEN = "admin-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WAIT = 15

API_CALLS = [
    ("GET", "/admin/api/summary", None),
    ("GET", "/admin/api/deliveries", None),
    ("GET", "/admin/api/deliveries/1", None),
    ("POST", "/admin/api/deliveries/1/replay", None),
    ("POST", "/admin/api/replay", {"all_failed": True}),
]
ALL_ADMIN_CALLS = [
    *API_CALLS,
    ("GET", "/admin/openapi.json", None),
    ("GET", "/status", None),
    ("GET", "/status/deliveries/1", None),
    ("POST", "/status/replay", None),
    ("GET", "/login", None),
    ("POST", "/login", None),
    ("POST", "/logout", None),
]


@pytest.fixture
def admin_env(relay_env):
    return {**relay_env, "RELAY_ADMIN_TOKEN": TOKEN}


def start(env) -> TestClient:
    # https: the session cookie is Secure, and a cookie jar keeps Secure cookies off http.
    return TestClient(create_app(Settings.from_env(env)), base_url="https://testserver")


@pytest.fixture
def client(admin_env):
    with start(admin_env) as client:
        yield client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html)[1]


def login(client, token: str = TOKEN, next_url: str = "/status"):
    form = client.get("/login")
    assert form.status_code == 200
    return client.post("/login", data={"token": token, "csrf_token": csrf_of(form.text), "next": next_url},
                       follow_redirects=False)


def logged_in(client) -> str:
    """Logs in; returns the CSRF token of the session's forms."""
    assert login(client).status_code == 303
    return csrf_of(client.get("/status").text)


def send(client, provider: str, call_id: str) -> int:
    name = "vapi/end-of-call-report" if provider == "vapi" else "retell/call_ended"
    body = with_call_id(name, call_id)
    headers = vapi_headers() if provider == "vapi" else retell_headers(body)
    return client.post(f"/webhooks/{provider}", content=body, headers=headers).json()["data"]["delivery_id"]


def state_of(client, delivery_id: int) -> str:
    return client.get(f"/admin/api/deliveries/{delivery_id}", headers=BEARER).json()["data"]["state"]


def failed(client, fake_roark, *calls, message: str = "payload rejected") -> list[int]:
    fake_roark.set_default(Respond(400, {"error_type": "validation", "error_code": "invalid_parameter",
                                         "message": message}))
    ids = [send(client, provider, call_id) for provider, call_id in calls]
    for delivery_id in ids:
        eventually(lambda delivery_id=delivery_id: state_of(client, delivery_id) == "failed", WAIT)
    return ids


# --- disabled without RELAY_ADMIN_TOKEN ---------------------------------------------------

@pytest.mark.parametrize("method, path, body", ALL_ADMIN_CALLS)
def test_without_the_admin_token_everything_is_disabled_not_open(relay_env, method, path, body):
    with start(relay_env) as client:
        for headers in ({}, BEARER, {"Authorization": "Bearer "}):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 404
            error = response.json()
            assert error["error_code"] == "admin_disabled" and "RELAY_ADMIN_TOKEN" in error["message"]
            assert response.headers["cache-control"] == "no-store"
        assert client.get("/health").status_code == 200


# --- the API: Bearer only -----------------------------------------------------------------

@pytest.mark.parametrize("method, path, body", API_CALLS)
@pytest.mark.parametrize("authorization", [
    None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}", TOKEN, "Bearer  ",
])
def test_api_refuses_missing_and_wrong_tokens(client, method, path, body, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error_type"] == "authentication"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


def test_api_takes_the_scheme_case_insensitively(client):
    assert client.get("/admin/api/summary", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("method, path, body", API_CALLS)
def test_api_ignores_the_page_session_cookie(client, method, path, body):
    logged_in(client)
    assert client.request(method, path, json=body).status_code == 401


def test_openapi_document_needs_the_token_or_a_session(client):
    assert client.get("/admin/openapi.json").status_code == 401
    assert client.get("/admin/openapi.json", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/admin/openapi.json", headers=BEARER).status_code == 200
    logged_in(client)
    assert client.get("/admin/openapi.json").status_code == 200


# --- the page: login, session, CSRF ---------------------------------------------------------

@pytest.mark.parametrize("path", ["/status", "/status?state=pending&provider=vapi", "/status/deliveries/1"])
def test_page_without_credentials_sends_people_to_log_in(client, path):
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login" and parse_qs(location.query)["next"] == [path]


def test_page_with_a_wrong_bearer_token_is_refused_not_redirected(client):
    response = client.get("/status", headers={"Authorization": "Bearer wrong-token-0123456789"},
                          follow_redirects=False)
    assert response.status_code == 401 and "text/html" in response.headers["content-type"]


def test_page_works_with_a_bearer_header_for_monitoring(client):
    response = client.get("/status", headers=BEARER)
    assert response.status_code == 200 and "Delivery running" in response.text
    assert "Log out" not in response.text and TOKEN not in response.text


def test_login_sets_a_hardened_session_cookie_that_is_not_the_token(client):
    response = login(client, next_url="/status/deliveries/7")
    assert response.status_code == 303 and response.headers["location"] == "/status/deliveries/7"
    [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= set(flags)
    assert flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/"
    assert flags["max-age"] == f"Max-Age={SESSION_SECONDS}" and "domain" not in flags
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in value and value.count(".") == 2  # nonce, issued, signature
    page = client.get("/status")
    assert page.status_code == 200 and "Log out" in page.text and TOKEN not in page.text


def test_wrong_token_login_is_refused_generically_and_never_echoed(client):
    response = login(client, token="wrong-SENTINEL-token-0123")
    assert response.status_code == 401 and "not accepted" in response.text
    assert "SENTINEL" not in response.text
    assert not any(c.startswith(SESSION_COOKIE) for c in response.headers.get_list("set-cookie"))
    assert client.get("/status", follow_redirects=False).status_code == 303


def test_login_form_needs_its_own_csrf_token(client):
    form = client.get("/login")
    for csrf in (None, "", "forged", csrf_of(form.text) + "x"):
        data = {"token": TOKEN, **({} if csrf is None else {"csrf_token": csrf})}
        response = client.post("/login", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert not any(c.startswith(SESSION_COOKIE) for c in response.headers.get_list("set-cookie"))
    with start_same(client) as other:  # the right field, but without its login cookie
        response = other.post("/login", data={"token": TOKEN, "csrf_token": csrf_of(form.text)},
                              follow_redirects=False)
        assert response.status_code == 403


@contextlib.contextmanager
def start_same(client, address: str = "testclient") -> Iterator[TestClient]:
    """A second browser on the same running app (its own cookie jar), from `address`: it
    sends its requests through the running client's event loop, so the app starts once."""
    other = TestClient(client.app, base_url="https://testserver", client=(address, 50000))
    other.portal = client.portal
    try:
        yield other
    finally:
        other.portal = None


def login_from(client, address: str, token: str = TOKEN):
    with start_same(client, address) as other:
        return login(other, token)


@pytest.mark.parametrize("next_url, expected", [
    ("https://evil.example/", "/status"), ("//evil.example/status", "/status"),
    ("/status//evil.example", "/status"), ("/\\evil.example", "/status"), ("/statusx", "/status"),
    ("/admin/api/summary", "/status"), ("javascript:alert(1)", "/status"),
    ("/status?state=pending", "/status?state=pending"), ("/status/deliveries/3", "/status/deliveries/3"),
])
def test_login_only_redirects_within_the_status_page(client, next_url, expected):
    assert login(client, next_url=next_url).headers["location"] == expected


def test_replay_form_needs_a_session_and_its_csrf_token(client, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("vapi", "csrf-call"))
    fake_roark.set_default(Accept())
    form = {"action": "selected", "ids": str(delivery_id)}
    assert client.post("/status/replay", data=form, follow_redirects=False).status_code == 401
    csrf = logged_in(client)
    with start_same(client) as other:
        other_csrf = logged_in(other)
    for bad in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}, {"csrf_token": other_csrf},
                {"csrf_token": csrf[:-1]}):
        response = client.post("/status/replay", data={**form, **bad}, follow_redirects=False)
        assert response.status_code == 403 and "CSRF" in response.text
    assert state_of(client, delivery_id) == "failed"
    response = client.post("/status/replay", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/status?state=failed&replayed=1"
    eventually(lambda: state_of(client, delivery_id) == "delivered", WAIT)
    assert "Replayed 1 delivery" in client.get(response.headers["location"]).text


def test_bearer_form_posts_need_no_csrf_token(client, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("retell", "script-call"))
    response = client.post("/status/replay", data={"action": "selected", "ids": str(delivery_id)},
                           headers=BEARER, follow_redirects=False)
    assert response.status_code == 303 and "replayed=1" in response.headers["location"]


def test_replay_all_failed_from_the_page_keeps_the_filters(client, fake_roark):
    vapi_id, retell_id = failed(client, fake_roark, ("vapi", "f-1"), ("retell", "f-2"))
    fake_roark.set_default(Accept())
    csrf = logged_in(client)
    response = client.post("/status/replay", follow_redirects=False, data={
        "csrf_token": csrf, "action": "all_failed", "state": "failed", "provider": "retell", "call_id": ""})
    assert response.headers["location"] == "/status?state=failed&provider=retell&replayed=1"
    eventually(lambda: state_of(client, retell_id) == "delivered", WAIT)
    assert state_of(client, vapi_id) == "failed"


def test_replaying_with_nothing_ticked_says_so(client):
    csrf = logged_in(client)
    response = client.post("/status/replay", data={"action": "selected", "csrf_token": csrf},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/status?state=failed&nothing_selected=1"
    assert "Nothing selected" in client.get(response.headers["location"]).text


def test_page_replay_refuses_invalid_forms(client):
    csrf = logged_in(client)
    for form in ({"action": "everything"}, {"action": "selected", "ids": "abc"},
                 {"action": "selected", "ids": [str(n) for n in range(1, 502)]},
                 {"action": "all_failed", "provider": "twilio"}):
        response = client.post("/status/replay", data={**form, "csrf_token": csrf}, follow_redirects=False)
        assert response.status_code == 400 and "text/html" in response.headers["content-type"]


def test_logout_needs_csrf_and_then_the_old_cookie_is_dead(client):
    csrf = logged_in(client)
    session = client.cookies[SESSION_COOKIE]
    assert client.post("/logout", follow_redirects=False).status_code == 403
    assert client.get("/status", follow_redirects=False).status_code == 200
    response = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert SESSION_COOKIE not in client.cookies
    client.cookies.set(SESSION_COOKIE, session)  # a stolen copy is no good either
    assert client.get("/status", follow_redirects=False).status_code == 303


def test_logout_without_a_session_and_its_csrf_token_touches_no_cookie(client):
    csrf = logged_in(client)
    # A cross-site form: SameSite=Strict keeps the session cookie home, but the browser
    # would still apply a Set-Cookie that deletes it.
    with start_same(client) as attacker:
        for form in ({}, {"csrf_token": csrf}):
            response = attacker.post("/logout", data=form, follow_redirects=False)
            assert response.status_code in (303, 403) and "set-cookie" not in response.headers
    response = client.post("/logout", data={"csrf_token": "forged"}, follow_redirects=False)
    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert client.get("/status", follow_redirects=False).status_code == 200


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_logout_holds_on_every_instance_and_after_a_restart(admin_env, store, request):
    if store == "postgres":
        admin_env = {**admin_env, "RELAY_DATABASE_URL": request.getfixturevalue("postgres_schema_url")}
    with start(admin_env) as first, start(admin_env) as second:  # two instances, one database
        csrf = logged_in(first)
        session = first.cookies[SESSION_COOKIE]
        second.cookies.set(SESSION_COOKIE, session)
        assert second.get("/status", follow_redirects=False).status_code == 200
        assert first.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
        assert second.get("/status", follow_redirects=False).status_code == 303
    with start(admin_env) as restarted:
        restarted.cookies.set(SESSION_COOKIE, session)
        assert restarted.get("/status", follow_redirects=False).status_code == 303


def test_login_guesses_are_limited_per_client_and_overall(admin_env):
    stopped = LoginThrottle(clock=lambda: 0.0)  # no budget refills during the test
    app = create_app(Settings.from_env(admin_env), login_throttle=stopped)

    def no_session(response) -> bool:
        return not any(c.startswith(SESSION_COOKIE) for c in response.headers.get_list("set-cookie"))

    with TestClient(app, base_url="https://testserver") as client:
        for _ in range(FAILURES_PER_CLIENT):
            assert login(client, token="wrong-guess-0123456789").status_code == 401
        refused = login(client, token="wrong-guess-0123456789")
        assert refused.status_code == 429 and no_session(refused)
        assert 1 <= int(refused.headers["retry-after"]) <= 60 and "Too many" in refused.text
        assert login(client).status_code == 303  # the right token is never locked out
        assert client.get("/status", headers=BEARER).status_code == 200  # scripts are not locked out
        assert login_from(client, "198.51.100.1").status_code == 303  # nor is anyone else
        for n in range(FAILURES_OVERALL // FAILURES_PER_CLIENT - 1):  # the first client spent one share
            with start_same(client, f"203.0.113.{n}") as guesser:
                for _ in range(FAILURES_PER_CLIENT):
                    assert login(guesser, token="wrong-guess-0123456789").status_code == 401
        refused = login_from(client, "198.51.100.2", token="wrong-guess-0123456789")
        assert refused.status_code == 429 and no_session(refused)
        assert login_from(client, "198.51.100.3").status_code == 303


def test_rotating_the_token_logs_everyone_out(client, admin_env):
    logged_in(client)
    session = client.cookies[SESSION_COOKIE]
    with start({**admin_env, "RELAY_ADMIN_TOKEN": "a-brand-new-admin-token-987"}) as rotated:
        rotated.cookies.set(SESSION_COOKIE, session)
        assert rotated.get("/status", follow_redirects=False).status_code == 303


def test_sessions_expire_and_cannot_be_forged():
    now = [1_700_000_000.0]
    signed = Signed(Secret(TOKEN), clock=lambda: now[0])
    session = signed.new_session()
    assert signed.session(session).issued == now[0]
    nonce, issued, signature = session.split(".")
    later = Signed(Secret(TOKEN), clock=lambda: now[0] + 3600).new_session()
    assert not signed.session(f"{nonce}.{later.split('.')[1]}.{signature}")  # extended
    assert not signed.session(f"{nonce}x.{issued}.{signature}")
    assert not signed.session(f"{nonce}.{issued}.{signature[:-2]}")
    assert not signed.session(TOKEN) and not signed.session("") and not signed.session("a..b") \
        and not signed.session("café.✓")
    assert not Signed(Secret("another-admin-token-0000"), clock=lambda: now[0]).session(session)
    now[0] += SESSION_SECONDS - 1
    assert signed.session(session)
    now[0] += 1
    assert not signed.session(session)


# --- hardening headers --------------------------------------------------------------------

def test_every_admin_answer_is_uncacheable_and_script_free(client):
    logged_in(client)
    answers = [client.get("/status"), client.get("/status/deliveries/999"), client.get("/login"),
               client.get("/admin/api/summary"), client.get("/admin/api/summary", headers=BEARER),
               client.get("/status?state=bogus")]
    for response in answers:
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp
    assert [r.status_code for r in answers] == [200, 404, 200, 401, 200, 400]


def test_hsts_is_sent_on_admin_pages_over_https_only(admin_env):
    for scheme in ("https", "http"):
        with TestClient(create_app(Settings.from_env(admin_env)), base_url=f"{scheme}://testserver") as client:
            for response in (client.get("/login"), client.get("/status", follow_redirects=False),
                             client.get("/admin/api/summary", headers=BEARER)):
                hsts = response.headers.get("strict-transport-security")
                assert hsts == ("max-age=31536000" if scheme == "https" else None)


@pytest.mark.parametrize("path", ["/status/", "/status", "/status/deliveries/1", "/login?next=/status",
                                  "/webhooks/vapi/", "/health/", "/login/"])
def test_redirects_never_name_a_forged_host(client, path):
    forged = {"host": "evil.example"}
    answers = [client.get(path, headers=forged, follow_redirects=False)]
    csrf = logged_in(client)
    answers += [client.get(path, headers=forged, follow_redirects=False),
                client.post("/logout", data={"csrf_token": csrf}, headers=forged, follow_redirects=False)]
    for response in answers:
        location = response.headers.get("location", "")
        assert "evil" not in location and not urlsplit(location).netloc
        assert location == "" or location.startswith("/")


# --- what the page shows ------------------------------------------------------------------

def test_attacker_controlled_text_is_escaped_everywhere(client, fake_roark):
    call_id = '<script>alert("call")</script>'
    [delivery_id] = failed(client, fake_roark, ("vapi", call_id),
                           message='<img src=x onerror=alert("roark")>')
    logged_in(client)
    pages = [client.get("/status"), client.get(f"/status/deliveries/{delivery_id}"),
             client.get("/status?call_id=<script>"), client.get("/status?<script>x=1")]
    for page in pages:
        assert "<script" not in page.text.lower() and "<img" not in page.text.lower()
    listing, detail = pages[0].text, pages[1].text
    assert "&lt;script&gt;alert(&#34;call&#34;)&lt;/script&gt;" in listing
    assert "&lt;img src=x onerror=alert(&#34;roark&#34;)&gt;" in listing
    assert "&lt;script&gt;" in detail and "&lt;img src=x" in detail
    assert pages[3].status_code == 400


def test_detail_page_masks_secrets_and_shows_attempts(client, fake_roark):
    [delivery_id] = failed(client, fake_roark, ("vapi", "detail-call"))
    logged_in(client)
    page = client.get(f"/status/deliveries/{delivery_id}").text
    assert "REDACT-ME" not in page
    assert "&#34;twilioAuthToken&#34;: &#34;********&#34;" in page
    assert "payload rejected" in page and "gave up" in page and "Replay this delivery" in page


def test_paused_delivery_is_announced(client, fake_roark):
    fake_roark.set_default(Respond(401))
    send(client, "retell", "paused-call")
    logged_in(client)

    def paused_page():
        text = client.get("/status").text
        return text if "Delivery paused:" in text else None
    page = eventually(paused_page, WAIT)
    assert "check ROARK_API_KEY" in page


def test_page_filters_and_pages_with_a_cursor(client, fake_roark):
    ids = failed(client, fake_roark, ("vapi", "p-1"), ("vapi", "p-2"), ("vapi", "p-3"))
    logged_in(client)
    first = client.get("/status?state=failed&limit=2").text
    assert f'id="delivery-{ids[2]}"' in first and f'id="delivery-{ids[0]}"' not in first
    older = re.search(r'href="([^"]+)" rel="next">Older', first)[1].replace("&amp;", "&")
    assert parse_qs(urlsplit(older).query)["cursor"] == [str(ids[1])]
    second = client.get(older + "&limit=2").text
    assert f'id="delivery-{ids[0]}"' in second and "Older" not in second and "Newest" in second
    assert f'id="delivery-{ids[0]}"' not in client.get("/status?state=delivered").text
    assert f'id="delivery-{ids[0]}"' in client.get("/status?state=all&call_id=p-1").text
