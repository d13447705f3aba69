"""`relay check --upstream`: prove, before any webhook depends on it, that Roark takes
the configured key and that every destination answers."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from relay.forwarding.retry import parse_retry_after
from relay.settings import Settings

#: Roark calls `relay check --upstream` makes at most, each, while the answer is
#: transient (no connection, a timeout, 429, 5xx)...
CHECK_TRIES = 3
#: ...and the longest it waits between them, even when Retry-After asks for more.
CHECK_LONGEST_WAIT_SECONDS = 10.0
#: An evaluation job no account has: reading it proves the key and changes nothing.
KEY_PROBE_PATH = "/v1/evaluation/job/00000000-0000-0000-0000-000000000000"


def roark(settings: Settings, echo: Callable[[str], None]) -> bool:
    """Prove the Roark key and base URL, retrying what may pass (no connection, 429, 5xx)."""
    backoff = wait_exponential(multiplier=0.5, max=CHECK_LONGEST_WAIT_SECONDS)

    def pause(attempt: RetryCallState) -> float:
        outcome = attempt.outcome
        asked = None if outcome.failed else parse_retry_after(outcome.result().headers, time.time())
        return backoff(attempt) if asked is None else min(asked, CHECK_LONGEST_WAIT_SECONDS)

    retrying = Retrying(
        retry=retry_if_exception_type((httpx.ConnectError, httpx.TimeoutException))
        | retry_if_result(lambda response: response.status_code == 429 or response.status_code >= 500),
        stop=stop_after_attempt(CHECK_TRIES),
        wait=pause,
        # after the last try, its answer (or error) is what gets reported
        retry_error_callback=lambda attempt: attempt.outcome.result(),
    )
    base = settings.roark_base_url
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


def destinations(settings: Settings, echo: Callable[[str], None]) -> bool:
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
