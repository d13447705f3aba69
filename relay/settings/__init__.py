"""The relay's configuration: one frozen object, read from the environment once.

`Settings.from_env()` is the only place the relay reads environment variables. Each
setting is declared once below (variable, default, bounds, help; see `relay.core.envvars`),
each provider declares its own in its module, and config/relay.env.example is written
from the same declarations (`relay settings`). Everything is validated at start-up: a
`ConfigError` names the variable, so a misconfigured relay refuses to start instead of
failing on the first webhook.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relay.core import envvars
from relay.core.backoff import RetryPolicy
from relay.core.envvars import (
    Choice,
    Flag,
    Integer,
    JsonObject,
    Names,
    Number,
    Seconds,
    Secret,
    SecretValue,
    Text,
    Url,
    setting,
)
from relay.core.errors import ConfigError
from relay.core.names import ROARK
from relay.destinations import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_SECONDS,
    RESULT_KINDS,
    Channel,
    Channels,
    Destination,
    Destinations,
)
from relay.providers import PROVIDER_NAMES, PROVIDERS
from relay.settings.environment import (
    DOTENV,
    TEST_PREFIX,
    TEST_VARIABLES,
    environment,
    unknown_names,
    unknown_warnings,
)
from relay.settings.parsers import AdminToken, DatabaseUrl, Sources

__all__ = ["DOTENV", "TEST_PREFIX", "TEST_VARIABLES", "Secret", "Settings", "example_file", "known_variables"]

LOG_LEVELS = ("debug", "info", "warning", "error")



@dataclass(frozen=True)
class Settings:
    roark_api_key: Secret | None = setting(
        "ROARK_API_KEY", None, SecretValue(),
        "Your Roark API key, sent as `Authorization: Bearer ...`.",
        required=True, placeholder="rk_live_replace_me", section="Roark (upstream)")
    roark_base_url: str = setting("ROARK_BASE_URL", "https://api.roark.ai", Url(), "Roark's API.")
    roark_timeout_seconds: float = setting(
        "ROARK_TIMEOUT_SECONDS", 60.0, Seconds(1), "Seconds for one POST to Roark (connecting gets 5 s of it).")
    roark_properties: Mapping[str, Any] = setting(
        "ROARK_PROPERTIES", {}, JsonObject('{"business_name": "Acme"}'),
        'JSON object sent as `properties` with every call, e.g. {"business_name": "Acme"}.')
    roark_field_case: str = setting(
        "ROARK_FIELD_CASE", "snake", Choice(("snake", "camel")),
        """snake (the spec: vapi_end_of_call_report_payload) or camel
        (vapiEndOfCallReportPayload) for deployments whose Roark API expects the older
        SDK's field names.""")
    https_proxy: str | None = setting(
        "HTTPS_PROXY", None, Url(), "Proxy for an https ROARK_BASE_URL (https_proxy is read too).",
        fallback="https_proxy", example="", in_repr=False)
    http_proxy: str | None = setting(
        "HTTP_PROXY", None, Url(), "Proxy for an http ROARK_BASE_URL (http_proxy is read too).",
        fallback="http_proxy", example="", in_repr=False)
    all_proxy: str | None = setting(
        "ALL_PROXY", None, Url(), "Proxy for Roark when the one for its scheme is unset.",
        fallback="all_proxy", example="", in_repr=False)
    no_proxy: str = setting(
        "NO_PROXY", "", Text(), "Hosts reached without a proxy, comma-separated (no_proxy too).",
        fallback="no_proxy")
    sources: Mapping[str, Mapping[str, Any]] = setting(
        "RELAY_SOURCES", {}, Sources(),
        """Named sources: a webhook sent to /webhooks/vapi/acme carries these properties
        too, e.g. {"acme": {"business_name": "Acme"}}. Query parameters on a webhook URL
        (/webhooks/vapi?business_name=Acme) are added as properties as well; they override
        a source's, which override ROARK_PROPERTIES.""")
    query_properties: bool = setting(
        "RELAY_QUERY_PROPERTIES", True, Flag(),
        """true: query parameters on a webhook URL are sent to Roark as properties. No
        provider signs the URL, so whoever first delivers a captured webhook chooses
        them. false: only named sources (RELAY_SOURCES) set properties, and a webhook
        URL with a query string is refused with 400.""")

    database_url: str = setting(
        "RELAY_DATABASE_URL", "sqlite:///relay.db", DatabaseUrl(),
        """The outbox. A file path or sqlite:///path (sqlite:////abs/path for an absolute
        one), or postgresql://user:password@host:5432/dbname. DATABASE_URL (set by
        Heroku's Postgres add-on) is used when this is unset.""",
        fallback="DATABASE_URL", section="Storage")
    database_pool_size: int = setting(
        "RELAY_DATABASE_POOL_SIZE", 10, Integer(1, 100),
        "Most connections one relay process opens to PostgreSQL (small Heroku plans allow 20).")
    retention_days: float = setting(
        "RELAY_RETENTION_DAYS", 30.0, Seconds(0),
        """Delivered webhooks older than this many days are deleted; failed ones are kept
        until replayed or pruned. 0 keeps everything.""")
    retention_interval_seconds: float = setting(
        "RELAY_RETENTION_INTERVAL_SECONDS", 3600.0, Seconds(1), "How often retention runs.")
    retention_pause_seconds: float = setting(
        "RELAY_RETENTION_PAUSE_SECONDS", 0.05, Seconds(0),
        """Retention deletes a few hundred deliveries per transaction and waits this long
        between them, so webhooks arriving meanwhile are stored without waiting on it.""")

    insecure_skip_verification: tuple[str, ...] = setting(
        "RELAY_INSECURE_SKIP_VERIFICATION", (), Names(PROVIDER_NAMES),
        """DANGER, local experiments only: accept unsigned webhooks from these providers
        (comma-separated). The relay logs a warning at start-up for each.""",
        example="", section="Webhook verification")

    host: str = setting("RELAY_HOST", "127.0.0.1", Text(),
                        "Interface to bind; 0.0.0.0 to accept webhooks from outside.", section="Server")
    port: int = setting("PORT", 8000, Integer(0, 65535), "Port to listen on.")
    log_level: str = setting("RELAY_LOG_LEVEL", "info", Choice(LOG_LEVELS), "Log level.")
    log_format: str = setting("RELAY_LOG_FORMAT", "auto", Choice(("auto", "json", "console")),
                              "auto: JSON unless on a terminal.")
    max_body_bytes: int = setting(
        "RELAY_MAX_BODY_BYTES", 25 * 1024 * 1024, Integer(1024),
        "Bodies larger than this are refused with 413 (VAPI reports can reach several MB).")
    body_timeout_seconds: float = setting(
        "RELAY_BODY_TIMEOUT_SECONDS", 30.0, Seconds(0.1),
        "A client that has not sent its whole body by then gets 408.")
    body_min_bytes_per_second: int = setting(
        "RELAY_BODY_MIN_BYTES_PER_SECOND", 32 * 1024, Integer(0),
        """A body must keep arriving at this rate: one that brings less than this many
        bytes per second over any RELAY_BODY_RATE_WINDOW_SECONDS gets 408 long before
        RELAY_BODY_TIMEOUT_SECONDS (providers send from data centres, far faster). 0
        turns the check off.""")
    body_rate_window_seconds: float = setting(
        "RELAY_BODY_RATE_WINDOW_SECONDS", 2.0, Seconds(0.1),
        "The span over which RELAY_BODY_MIN_BYTES_PER_SECOND is measured.")
    head_timeout_seconds: float = setting(
        "RELAY_HEAD_TIMEOUT_SECONDS", 10.0, Seconds(0.1),
        """A request's line and headers must arrive within this long of the connection
        opening or of the previous answer (an idle kept-alive connection is closed then).""")
    max_connections: int = setting(
        "RELAY_MAX_CONNECTIONS", 2048, Integer(8),
        """Client connections held at once (each costs several KB). Past it the connection
        that has waited longest for its request head (idle or half sent) is closed to make
        room; when every one is busy with a request, the new one gets 503. Never more than
        the process's file descriptor limit allows.""")
    head_budget_bytes: int = setting(
        "RELAY_HEAD_BUDGET_BYTES", 4 * 1024 * 1024, Integer(64 * 1024),
        """Bytes of unfinished request heads held across all connections; past it the
        oldest unfinished heads are answered 503 and closed. One head alone is refused
        with 431 past relay/http/protocol.py's MAX_REQUEST_HEAD_BYTES or MAX_HEADERS.""")
    unverified_body_budget_bytes: int = setting(
        "RELAY_UNVERIFIED_BODY_BUDGET_BYTES", 32 * 1024 * 1024, Integer(0),
        """Bytes of webhook bodies held, across all requests, before their signature is
        checked, counted as they arrive; past it requests get 503 + Retry-After (one body
        alone always fits). With the next, it keeps the relay inside a 512 MB machine
        whatever is sent to it.""")
    unverified_body_budget_per_client_bytes: int = setting(
        "RELAY_UNVERIFIED_BODY_BUDGET_PER_CLIENT_BYTES", 8 * 1024 * 1024, Integer(0),
        """The share of RELAY_UNVERIFIED_BODY_BUDGET_BYTES one client address may hold at
        once (its first body alone always fits), so a few senders cannot take all of it.
        Behind a proxy the address is the proxy's unless uvicorn trusts its
        X-Forwarded-For (FORWARDED_ALLOW_IPS).""")
    verified_body_budget_bytes: int = setting(
        "RELAY_VERIFIED_BODY_BUDGET_BYTES", 64 * 1024 * 1024, Integer(0),
        "Bytes of verified webhook bodies on their way into the outbox at once; past it, 503.")
    pass_through_budget_bytes: int = setting(
        "RELAY_PASS_THROUGH_BUDGET_BYTES", 32 * 1024 * 1024, Integer(0),
        """Bytes of your server's answers to passed-through messages (VAPI_SERVER_URL) held
        at once, until each is sent back: a message that finds them full gets 503, an
        answer that would take them past it 502, each saying why.""")
    pass_through_connections: int = setting(
        "RELAY_PASS_THROUGH_CONNECTIONS", 256, Integer(1, 4096),
        """Connections to your server (VAPI_SERVER_URL) at once; a message that finds every
        one busy until its deadline gets 504 saying so.""")

    admin_token: Secret | None = setting(
        "RELAY_ADMIN_TOKEN", None, AdminToken(),
        """Enables the status page (/status), the admin API (/admin/api), /metrics and the
        reasons in /health; scripts send it as `Authorization: Bearer ...`. A random
        string, different from every provider secret. Unset: all disabled.""",
        section="Operators")
    pending_age_degraded_seconds: float = setting(
        "RELAY_PENDING_AGE_DEGRADED_SECONDS", 900.0, Seconds(1),
        '/health reports "degraded" when the oldest undelivered webhook is older than this.')
    redact_keys: tuple[str, ...] = setting(
        "RELAY_REDACT_KEYS", (), Names(),
        """Extra payload keys whose values are masked wherever the relay shows a payload
        and removed before forwarding (see RELAY_STRIP_SECRETS_UPSTREAM), comma-separated,
        e.g. customerPin,internalNote. Provider credential fields (twilioAuthToken,
        twilioApiSecret, ...) always are; anything named like a secret is masked too.""")
    strip_secrets_upstream: bool = setting(
        "RELAY_STRIP_SECRETS_UPSTREAM", True, Flag(),
        """true: remove provider credential fields (relay/core/redaction.py CREDENTIAL_KEYS:
        twilioAuthToken, twilioApiSecret, apiKey, secret, password, credentials, ...) and
        RELAY_REDACT_KEYS, whatever they hold, before forwarding to Roark; the rest of
        the payload is forwarded unchanged. false: forward the payload as the provider
        sent it, the customer's Twilio credentials included.""")

    forward: str = setting(
        "RELAY_FORWARD", "process", Choice(("process", "inline", "off")),
        """Where `relay serve` forwards. process: in a forwarding process of its own,
        started (and restarted) with the server, so receiving and delivering do not share
        one interpreter; inline: in the server process; off: not here (a `relay forward`
        elsewhere delivers, e.g. a Heroku worker dyno).""",
        section="Forwarding")
    forward_nice: int = setting(
        "RELAY_FORWARD_NICE", 10, Integer(0, 19),
        """With RELAY_FORWARD=process: how much lower the forwarding process's CPU priority
        is than the server's (Unix nice). When both want the CPU, webhooks are acknowledged
        first and deliveries take what is left; on a machine with CPU to spare, nothing
        changes. 0: equal.""")
    forward_concurrency: int = setting(
        "RELAY_FORWARD_CONCURRENCY", 128, Integer(1, 512),
        """Deliveries in flight at once. It bounds a drain at this many per Roark latency
        (128 at 200 ms: 640/s); the bytes in flight are capped at 16 MB however many.""")
    #: None (unset) only until __post_init__ puts the default in its place.
    lease_seconds: float = setting(
        "RELAY_LEASE_SECONDS", None, Seconds(1),
        """A claimed delivery not finished within this long is claimed again (crash
        recovery). Must exceed ROARK_TIMEOUT_SECONDS and every destination's
        timeout_seconds; defaults to twice the longest of them.""",
        example="120")
    poll_interval_seconds: float = setting(
        "RELAY_POLL_INTERVAL_SECONDS", 1.0, Seconds(0.01),
        "How often the forwarder looks for due deliveries when nothing wakes it.")
    metrics_interval_seconds: float = setting(
        "RELAY_METRICS_INTERVAL_SECONDS", 5.0, Seconds(0.01),
        """How often the forwarding process hands its metrics to the server for /metrics;
        the forwarder's counters there lag by up to this long.""")
    auth_pause_seconds: float = setting(
        "RELAY_AUTH_PAUSE_SECONDS", 300.0, Seconds(0.1),
        "After Roark answers 401/403 (a wrong key), wait this long before trying again.")
    shutdown_grace_seconds: float = setting(
        "RELAY_SHUTDOWN_GRACE_SECONDS", 10.0, Seconds(0),
        "On shutdown, in-flight deliveries get this long to finish before being handed back.")
    retry_max_attempts: int = setting(
        "RELAY_RETRY_MAX_ATTEMPTS", RetryPolicy.max_attempts, Integer(1),
        """Exponential backoff from RELAY_RETRY_BASE_SECONDS, x3 per attempt, capped at
        RELAY_RETRY_MAX_DELAY_SECONDS, ±20% jitter; the defaults span more than 24 hours.""")
    retry_base_seconds: float = setting(
        "RELAY_RETRY_BASE_SECONDS", RetryPolicy.base_delay, Seconds(0), "First retry delay.")
    retry_max_delay_seconds: float = setting(
        "RELAY_RETRY_MAX_DELAY_SECONDS", RetryPolicy.max_delay, Seconds(0), "Longest retry delay.")

    destinations: tuple[Destination, ...] = setting(
        "RELAY_DESTINATIONS", (), Destinations(),
        f"""Your own endpoints, beside Roark: each receives a durable, signed copy of the
        webhooks it asks for, retried on its own schedule. A JSON array of objects:
        "name" ([a-z0-9_-], not roark), "url", "secret" (whsec_..., from `relay secret`;
        several comma-separated while rotating), "events" (provider:event or provider:*;
        default the events Roark receives; roark:evaluation, roark:sentiment or roark:*
        for Roark's verdicts, RELAY_RESULTS), "when" ({{"classification": "failure"}} or
        {{"score_below": 0.5}}: which evaluations), and optionally "original_headers" (true: pass
        the provider's own authentication headers on too), "timeout_seconds"
        ({DEFAULT_TIMEOUT_SECONDS:g}), "concurrency" ({DEFAULT_CONCURRENCY}). See docs/providers.md, "One URL
        for everything".""",
        example="", in_repr=False, section="Destinations")

    alerts: tuple[Channel, ...] = setting(
        "RELAY_ALERTS", (), Channels(),
        """Where the relay says that delivery is in trouble, once, and again when it is
        over. A JSON array of objects: "name", "url", "format" (slack: a Slack incoming
        webhook URL; webhook: your endpoint, sent a Standard Webhooks signed JSON body),
        "secret" (webhook only: whsec_..., from `relay secret`), "kinds" (default all:
        delivery, dead_letter, backlog, forwarding, reconciliation, storage). See
        docs/operating.md, "Alerts".""",
        example="", in_repr=False, section="Alerts")
    public_url: str | None = setting(
        "RELAY_PUBLIC_URL", None, Url(),
        "The relay's address as operators reach it (https://relay.example.com): alerts link to its status page.",
        example="")
    alert_after_seconds: float = setting(
        "RELAY_ALERT_AFTER_SECONDS", 300.0, Seconds(0),
        """A delivery alert opens once every attempt to Roark or a destination has failed
        for this long (a pause after 401/403, or a destination's 410, opens one at once);
        so does a forwarding alert once no forwarding process has reported for this long.""")
    alert_remind_seconds: float = setting(
        "RELAY_ALERT_REMIND_SECONDS", 14400.0, Seconds(1),
        "An open alert nobody acknowledged is sent again this often.")
    alert_clear_seconds: float = setting(
        "RELAY_ALERT_CLEAR_SECONDS", 60.0, Seconds(0),
        """An alert resolves once its condition has not been seen, by any instance, for
        this long: a flapping receiver makes one alert, not one per flap.""")
    alert_check_seconds: float = setting(
        "RELAY_ALERT_CHECK_SECONDS", 10.0, Seconds(0.1),
        "How often the server looks for trouble and sends the alert messages due.")
    alert_dead_letter_window_seconds: float = setting(
        "RELAY_ALERT_DEAD_LETTER_WINDOW_SECONDS", 300.0, Seconds(0.1),
        """Deliveries that fail for good are summed per destination: the alert opens once
        the first is this old, counting every one since, and resolves once this long
        passes without another.""")
    alert_storage_window_seconds: float = setting(
        "RELAY_ALERT_STORAGE_WINDOW_SECONDS", 60.0, Seconds(0.1),
        """A storage alert is open while webhooks were answered 503 (the outbox could not
        store them) within this long.""")
    alert_timeout_seconds: float = setting(
        "RELAY_ALERT_TIMEOUT_SECONDS", 10.0, Seconds(0.1), "Longest one alert message's POST may take.")
    alert_retry_max_attempts: int = setting(
        "RELAY_ALERT_RETRY_MAX_ATTEMPTS", 10, Integer(1),
        """A message a channel does not take (no answer, 5xx, 429) is sent again, backing
        off from RELAY_ALERT_RETRY_BASE_SECONDS x3 up to RELAY_ALERT_RETRY_MAX_DELAY_SECONDS,
        this many times in all; a channel that refuses (another 4xx) is not retried. The
        status page shows a channel that fails.""")
    alert_retry_base_seconds: float = setting(
        "RELAY_ALERT_RETRY_BASE_SECONDS", 5.0, Seconds(0), "First retry of an alert message.")
    alert_retry_max_delay_seconds: float = setting(
        "RELAY_ALERT_RETRY_MAX_DELAY_SECONDS", 600.0, Seconds(0), "Longest wait between an alert message's tries.")
    alert_score_below: float = setting(
        "RELAY_ALERT_SCORE_BELOW", 0.5, Number(float, 0, 1),
        """An evaluation alert counts the calls whose evaluation Roark classified as a
        failure, or scored below this (0-1).""")
    alert_evaluation_window_seconds: float = setting(
        "RELAY_ALERT_EVALUATION_WINDOW_SECONDS", 900.0, Seconds(0.1),
        """Badly evaluated calls are summed like dead letters: the alert opens once the
        first is this old, counting every one since, and resolves once this long passes
        without another.""")
    alert_mute_seconds: float = setting(
        "RELAY_ALERT_MUTE_SECONDS", 3600.0, Seconds(1),
        "How long the status page's Mute silences a subject's alert messages.")

    results: tuple[str, ...] = setting(
        "RELAY_RESULTS", (), Names(RESULT_KINDS),
        """Roark's verdicts to fetch for every call delivered to it: evaluation, sentiment
        (comma-separated; empty: none). They show on the status page, in the admin API
        and CLI, and go to destinations that ask for roark:evaluation or roark:sentiment.""",
        section="Results from Roark")
    results_delay_seconds: float = setting(
        "RELAY_RESULTS_DELAY_SECONDS", 120.0, Seconds(0),
        """The first fetch is this long after delivery; until every run has finished, the
        next waits twice as long as the one before, at most RELAY_RESULTS_MAX_DELAY_SECONDS.""")
    results_max_delay_seconds: float = setting(
        "RELAY_RESULTS_MAX_DELAY_SECONDS", 3600.0, Seconds(0.1), "Longest wait between two fetches of one verdict.")
    results_give_up_seconds: float = setting(
        "RELAY_RESULTS_GIVE_UP_SECONDS", 86400.0, Seconds(0),
        "A verdict not finished this long after its first fetch is given up (Roark documents no timing).")
    results_concurrency: int = setting(
        "RELAY_RESULTS_CONCURRENCY", 8, Integer(1, 128), "Fetches from Roark at once.")

    #: Each provider's own settings (see its module), by provider name.
    providers: Mapping[str, Any] = field(default_factory=dict)
    #: Variables set with the relay's prefixes that name no setting (see `unknown_variable_warnings`).
    unknown_variables: tuple[str, ...] = ()
    retry: RetryPolicy = field(init=False)
    alert_retry: RetryPolicy = field(init=False)

    reconcile_interval_seconds: float = setting(
        "RELAY_RECONCILE_INTERVAL_SECONDS", 900.0, Seconds(0),
        """How often the relay asks each provider's API which calls ended, and queues those
        whose webhook never came (a restart, an outage, a mistyped webhook URL). Runs for
        the providers whose API key is set (VAPI_API_KEY, RETELL_API_KEY). 0 turns it
        off.""", section="Reconciliation (missed webhooks)")
    reconcile_grace_seconds: float = setting(
        "RELAY_RECONCILE_GRACE_SECONDS", 600.0, Seconds(0),
        "Calls that ended less than this long ago are left alone: their webhook may still be on its way.")
    reconcile_lookback_seconds: float = setting(
        "RELAY_RECONCILE_LOOKBACK_SECONDS", 86400.0, Seconds(60),
        """How far back the first run looks. Later runs continue from where the last
        complete one ended (kept in the database, per provider), however long ago.""")
    reconcile_max_answer_bytes: int = setting(
        "RELAY_RECONCILE_MAX_ANSWER_BYTES", 16 * 1024 * 1024, Integer(64 * 1024),
        """Largest answer read from a provider's API. A page of calls larger than this is
        asked for again with half as many calls, down to one; a single call larger than
        it fails the run, naming this setting. With the calls handled one at a time, it
        bounds what a run holds, whatever the provider sends.""")
    reconcile_max_pages: int = setting(
        "RELAY_RECONCILE_MAX_PAGES", 100, Integer(1),
        """Pages of calls one run lists at most; a run that reaches it stops there, says
        so, and the next run goes on from that page.""")
    reconcile_max_run_seconds: float = setting(
        "RELAY_RECONCILE_MAX_RUN_SECONDS", 600.0, Seconds(1),
        "Longest one run may take; it stops there as at RELAY_RECONCILE_MAX_PAGES.")
    reconcile_timeout_seconds: float = setting(
        "RELAY_RECONCILE_TIMEOUT_SECONDS", 30.0, Seconds(1),
        """Longest one request to a provider's API may take, its whole answer included (an
        answer that trickles in is cut off there and asked for again).""")
    reconcile_request_interval_seconds: float = setting(
        "RELAY_RECONCILE_REQUEST_INTERVAL_SECONDS", 0.1, Seconds(0),
        "Least time between two requests to a provider's API: someone else's service is paced.")
    reconcile_lease_seconds: float = setting(
        "RELAY_RECONCILE_LEASE_SECONDS", 60.0, Seconds(1),
        """How long a run holds its provider (instances sharing a database take turns),
        renewed every third of it while the run lives: a run whose process died gives the
        provider up this long after, and /health says so meanwhile.""")

    def __post_init__(self) -> None:
        # A lease must outlast the slowest send it covers, or a delivery still in flight
        # is claimed and sent a second time.
        timeouts = [("ROARK_TIMEOUT_SECONDS", self.roark_timeout_seconds), *(
            (f"RELAY_DESTINATIONS ({d.name}'s timeout_seconds)", d.timeout_seconds) for d in self.destinations)]
        longest_name, longest = max(timeouts, key=lambda named: named[1])
        if self.lease_seconds is None:
            object.__setattr__(self, "lease_seconds", longest * 2)
        elif self.lease_seconds <= longest:
            raise ConfigError(
                "RELAY_LEASE_SECONDS",
                f"must exceed {longest_name} ({longest:g}) or a slow delivery could be claimed twice",
            )
        try:
            retry = RetryPolicy(max_attempts=self.retry_max_attempts, base_delay=self.retry_base_seconds,
                                max_delay=self.retry_max_delay_seconds)
        except ValueError as error:
            raise ConfigError("RELAY_RETRY_MAX_DELAY_SECONDS", str(error)) from None
        object.__setattr__(self, "retry", retry)
        try:
            alert_retry = RetryPolicy(max_attempts=self.alert_retry_max_attempts,
                                      base_delay=self.alert_retry_base_seconds,
                                      max_delay=self.alert_retry_max_delay_seconds)
        except ValueError as error:
            raise ConfigError("RELAY_ALERT_RETRY_MAX_DELAY_SECONDS", str(error)) from None
        object.__setattr__(self, "alert_retry", alert_retry)
        self._admin_token_is_its_own()

    def _admin_token_is_its_own(self) -> None:
        """The admin token opens the admin API: sharing a value with a secret given to
        Roark or a provider would hand them the relay as well."""
        if self.admin_token is None:
            return
        configs = [self, *self.providers.values()]
        for config in configs:
            for f, var in envvars.variables(type(config)):
                value = getattr(config, f.name)
                values = value if isinstance(value, tuple) else (value,)
                if var.name != "RELAY_ADMIN_TOKEN" and self.admin_token in values:
                    raise ConfigError("RELAY_ADMIN_TOKEN", f"must not be the same as {var.name}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, forwarding: bool = True) -> Settings:
        """Settings from the environment, and from a `.env` file in the working directory
        when there is one. `forwarding=False` is for commands that only read or repair
        the outbox, which need no ROARK_API_KEY."""
        if environ is None:
            environ = environment()
        providers: dict[str, Any] = {name: envvars.read(p.Settings, environ) for name, p in PROVIDERS.items()}
        optional = frozenset() if forwarding else frozenset({"ROARK_API_KEY"})
        unknown = unknown_names(environ, known_variables())
        return envvars.read(cls, environ, optional, providers=providers, unknown_variables=unknown)

    def timeout_of(self, destination: str) -> float:
        """Seconds one attempt to `destination` (Roark or one of RELAY_DESTINATIONS) may take."""
        found = next((d.timeout_seconds for d in self.destinations if d.name == destination), None)
        return self.roark_timeout_seconds if found is None else found

    def destination_urls(self) -> dict[str, str]:
        """Roark, then every configured destination, by name: where each is, as operators
        are shown it (a destination's user info and query left out)."""
        return {ROARK: self.roark_base_url, **{d.name: d.shown_url for d in self.destinations}}

    @property
    def roark_proxy(self) -> str | None:
        return self.proxy_for(self.roark_base_url)

    def proxy_for(self, url: str) -> str | None:
        """The proxy requests to `url` go through, chosen as curl and httpx choose it."""
        parts = urlsplit(url)
        proxy = (self.https_proxy if parts.scheme == "https" else self.http_proxy) or self.all_proxy
        # proxy_bypass_environment is undocumented, so typeshed leaves it out; urllib's own
        # proxy_bypass calls it.
        if proxy is None or urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                parts.hostname or "", {"no": self.no_proxy}):
            return None
        return proxy

    def unknown_variable_warnings(self) -> list[str]:
        """One line for each variable set with the relay's prefixes that names no setting,
        with the setting it most resembles: a typo would otherwise be silently ignored."""
        return unknown_warnings(self.unknown_variables, known_variables())

    def provider_notes(self) -> dict[str, list[str]]:
        """Per provider whose webhooks this relay accepts, what an operator may want to
        know at start-up though nothing is wrong."""
        return {name: provider.notes(self.providers[name]) for name, provider in PROVIDERS.items()
                if name in self.insecure_skip_verification or provider.configured(self.providers[name])}

    def provider_warnings(self) -> dict[str, list[str]]:
        """Per provider, what an operator must hear at start-up (nothing: all is well)."""
        return {
            name: ["signature verification is disabled (RELAY_INSECURE_SKIP_VERIFICATION): "
                   "anyone can post forged webhooks to this relay"]
            if name in self.insecure_skip_verification else provider.warnings(self.providers[name])
            for name, provider in PROVIDERS.items()
        }


def known_variables() -> frozenset[str]:
    """Every variable the relay reads: each setting's, and the fallbacks it takes."""
    names: set[str] = set()
    for config in (Settings, *(provider.Settings for provider in PROVIDERS.values())):
        for _, var in envvars.variables(config):
            names.update(name for name in (var.name, var.fallback) if name is not None)
    return frozenset(names)





EXAMPLE_HEADER = """\
# Roark Relay configuration. Copy to .env (or set in your platform's config vars).
# Every variable is read once at start-up; an invalid value stops the relay with a
# one-line message naming the variable. Secrets may hold several comma-separated
# values, so a secret can be rotated: add the new one, switch the provider, drop the old.
# Written by `relay settings` from the declarations in relay/settings/ and
# relay/providers/; change those, not this file."""


def example_file() -> str:
    """config/relay.env.example: every setting with its default (or an example) and help."""
    lines = [EXAMPLE_HEADER, *envvars.document(Settings)]
    for provider in PROVIDERS.values():
        lines += envvars.document(provider.Settings)
    return "\n".join(lines) + "\n"
