"""Proving a set-up works: `relay check` (the configuration and the database; with
--upstream, that Roark takes the key and every destination answers) and `relay
send-sample` (a signed sample webhook, end to end)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import click
import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from relay.cli.common import display_url, load_settings
from relay.core.errors import StoreUnavailable
from relay.core.transport import parse_retry_after
from relay.outbox import open_backend
from relay.outbox.sqlite import SQLiteBackend
from relay.providers import PROVIDER_NAMES, PROVIDERS
from relay.providers.samples import sample_events, with_call_id
from relay.settings import Settings

#: Roark calls `relay check --upstream` makes at most, each, while the answer is
#: transient (no connection, a timeout, 429, 5xx)...
CHECK_TRIES = 3
#: ...and the longest it waits between them, even when Retry-After asks for more.
CHECK_LONGEST_WAIT_SECONDS = 10.0
#: An evaluation job no account has: reading it proves the key and changes nothing.
KEY_PROBE_PATH = "/v1/evaluation/job/00000000-0000-0000-0000-000000000000"


def prove_roark(settings: Settings, echo: Callable[[str], None]) -> bool:
    """Prove the Roark key and base URL, retrying what may pass (no connection, 429, 5xx)."""
    backoff = wait_exponential(multiplier=0.5, max=CHECK_LONGEST_WAIT_SECONDS)

    def pause(attempt: RetryCallState) -> float:
        outcome = attempt.outcome
        assert outcome is not None  # a wait follows a finished attempt
        asked = None if outcome.failed else parse_retry_after(outcome.result().headers, time.time())
        return backoff(attempt) if asked is None else min(asked, CHECK_LONGEST_WAIT_SECONDS)

    def last_answer(attempt: RetryCallState) -> httpx.Response:
        assert attempt.outcome is not None  # the callback follows the last, finished attempt
        return attempt.outcome.result()

    retrying = Retrying(
        retry=retry_if_exception_type((httpx.ConnectError, httpx.TimeoutException))
        | retry_if_result(lambda response: response.status_code == 429 or response.status_code >= 500),
        stop=stop_after_attempt(CHECK_TRIES),
        wait=pause,
        # after the last try, its answer (or error) is what gets reported
        retry_error_callback=last_answer,
    )
    base = settings.roark_base_url
    assert settings.roark_api_key is not None  # `relay check` reads the settings for forwarding
    headers = {"Authorization": f"Bearer {settings.roark_api_key.reveal()}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        try:
            health = retrying(client.get, "/health")  # proves the URL; need not look at the key
            probe = retrying(client.get, KEY_PROBE_PATH)
        except httpx.HTTPError as error:
            echo(f"roark: FAILED cannot reach {base} ({type(error).__name__}). "
                       "Check ROARK_BASE_URL and the network.")
            return False
    if probe.status_code in (401, 403):
        echo(f"roark: FAILED Roark answered {probe.status_code}: ROARK_API_KEY is wrong or revoked.")
        return False
    if not health.is_success:
        echo(f"roark: FAILED Roark answered {health.status_code} at {base}/health. "
                   "Check ROARK_BASE_URL.")
        return False
    if probe.status_code != 404:  # the one answer that proves the key: authenticated, no such job
        echo(f"roark: FAILED Roark answered {probe.status_code} to an authenticated read "
                   f"({base}{KEY_PROBE_PATH}), so whether ROARK_API_KEY works is unknown.")
        return False
    try:
        status = health.json()["data"]["status"]
    except (ValueError, KeyError, TypeError):
        status = "unknown"
    echo(f"roark: ok (key accepted; Roark reports {status})")
    return True


def prove_destinations(settings: Settings, echo: Callable[[str], None]) -> bool:
    """A HEAD to each destination: any answer at all (405 included) proves it reachable;
    only a connection error or a timeout does not."""
    reachable = True
    for destination in settings.destinations:
        proxy = settings.proxy_for(destination.url)
        try:
            with httpx.Client(proxy=proxy, timeout=destination.timeout_seconds, trust_env=False) as client:
                answer = client.head(destination.url)
        except httpx.HTTPError as error:
            reachable = False
            echo(f"destination {destination.name}: FAILED cannot reach {destination.shown_url} "
                 f"({type(error).__name__}). Check its url in RELAY_DESTINATIONS and the network.")
            continue
        echo(f"destination {destination.name}: ok (reachable; answered {answer.status_code} to HEAD)")
    return reachable


@click.command()
@click.option("--upstream", is_flag=True,
              help="Also prove the Roark key and base URL with a read that changes nothing, "
                   "and that every destination answers.")
def check(upstream: bool) -> None:
    """Validate the configuration and the database (creating or upgrading its schema, as
    the relay would on start); with --upstream, prove that the Roark key and base URL
    work and that each destination is reachable. Exits 0 when all is well, 1 when a
    check failed, 2 on a configuration error."""
    settings = load_settings()
    failed = False
    click.echo(f"configuration: ok (Roark at {settings.roark_base_url})")
    for warning in settings.unknown_variable_warnings():
        click.echo(f"configuration: WARNING {warning}")
    notes = settings.provider_notes()
    for provider, warnings in settings.provider_warnings().items():
        for warning in warnings:
            click.echo(f"{provider}: WARNING {warning}")
        if provider not in settings.insecure_skip_verification and \
                PROVIDERS[provider].configured(settings.providers[provider]):
            click.echo(f"{provider}: signature verification configured")
        for note in notes.get(provider, []):
            click.echo(f"{provider}: note: {note}")
    if settings.admin_token is None:
        click.echo("status page, admin API and /metrics: disabled (set RELAY_ADMIN_TOKEN to enable)")
    backend = open_backend(settings.database_url, pool_size=settings.database_pool_size)
    try:
        version = backend.migrate()
        click.echo(f"database: ok ({display_url(settings.database_url)}, schema version {version})")
    except StoreUnavailable as error:
        failed = True
        # SQLite's reasons say what to do themselves (a missing directory, a permission).
        advice = "" if isinstance(backend, SQLiteBackend) else \
            " Check RELAY_DATABASE_URL (or DATABASE_URL) and that the PostgreSQL server is up."
        click.echo(f"database: FAILED ({display_url(settings.database_url)}): {error}.{advice}")
    finally:
        backend.close()
    for destination in settings.destinations:
        click.echo(f"destination {destination.name}: {destination.shown_url} "
                   f"({', '.join(sorted(destination.events | {p + ':*' for p in destination.all_events_of}))})")
    if upstream:
        failed |= not prove_roark(settings, click.echo)
        failed |= not prove_destinations(settings, click.echo)
    sys.exit(1 if failed else 0)


@click.command("send-sample")
@click.argument("provider", type=click.Choice(PROVIDER_NAMES))
@click.option("--url", help="The relay to send to: its base URL, or the webhook URL given to the provider "
                            "(/webhooks/<provider>, or a named source's /webhooks/<provider>/<source>); "
                            "default: this machine's, on PORT.")
@click.option("--event", help="Which sample: an event the provider sends (default: the one "
                              "Roark takes). See relay/providers/sample_payloads/.")
def send_sample(provider: str, url: str | None, event: str | None) -> None:
    """Send a sample webhook, signed with the configured secrets the way the provider signs
    it, to a relay (local or deployed) and print the answer: proof, end to end, that the
    relay accepts what the provider sends. A new call id each time. Exits 1 unless the
    relay answers 2xx."""
    settings = load_settings(forwarding=False)
    chosen = PROVIDERS[provider]
    event = event or sorted(chosen.roark_events)[0]
    if event not in sample_events(provider):
        raise click.BadParameter(f"no {provider} sample for {event!r}; there are: "
                                 f"{', '.join(sample_events(provider))}", param_hint="--event")
    body = with_call_id(f"{provider}/{event}", f"sample-{uuid.uuid4().hex[:12]}")
    try:
        headers = chosen.sign(settings.providers[provider], body, time.time())
    except ValueError as error:
        click.echo(f"relay: cannot sign a {provider} webhook: {error}; set it as the relay has it", err=True)
        sys.exit(2)
    target = webhook_url(url or f"http://127.0.0.1:{settings.port}", provider)
    try:
        answer = httpx.post(target, content=body, headers={"content-type": "application/json", **headers},
                            timeout=30)
    except httpx.HTTPError as error:
        click.echo(f"relay: cannot reach {target}: {type(error).__name__}: {error}", err=True)
        sys.exit(1)
    click.echo(f"{event} -> {target}: HTTP {answer.status_code}")
    click.echo(answer.text)
    sys.exit(0 if answer.is_success else 1)


def webhook_url(url: str, provider: str) -> str:
    """Where a sample for `provider` goes: `url` itself when it is a webhook URL (the one
    pasted from the provider's dashboard, a named source's too), otherwise `url` as the
    relay's base, however deep it is mounted."""
    from relay.http.app import WEBHOOK_PATH  # the server's routes, imported for this command alone

    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    _, marker, tail = path.rpartition("/webhooks/")
    if marker and (match := WEBHOOK_PATH.fullmatch(marker + tail)):
        if match[1] != provider:
            raise click.BadParameter(f"{url} is the {match[1]} webhook URL; give {provider}'s, or the "
                                     "relay's base URL", param_hint="--url")
        return urlunsplit(parts._replace(path=path))
    return urlunsplit(parts._replace(path=f"{path}/webhooks/{provider}"))


COMMANDS = (check, send_sample)
