"""Waiting for the outbox at start-up.

A relay often starts alongside its database: a container booting next to it, Heroku's
release phase running right after a new Postgres add-on. Starting (and `relay migrate`)
therefore tries again while the store is unavailable, for a bounded time, logging each
wait, before giving up with the store's own reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from relay.core.errors import StoreUnavailable
from relay.outbox.runner import AsyncOutbox
from relay.outbox.store import Backend

log = structlog.get_logger("relay.outbox")

#: How long starting waits for an unavailable store before it fails.
STARTUP_WAIT_SECONDS = 30.0
#: First and longest pause between attempts.
STARTUP_BACKOFF_SECONDS = (0.5, 5.0)


def startup_patience(database_url: str) -> float:
    """How long starting waits: a database server may come up after the relay, while a
    SQLite file that cannot be opened (a missing directory, a permission) will not fix
    itself, and a newcomer should hear so at once."""
    return 0.0 if database_url.startswith("sqlite:") else STARTUP_WAIT_SECONDS


def migrate_when_available(backend: Backend, patience: float = STARTUP_WAIT_SECONDS) -> int:
    """`backend.migrate()`, tried again while the store is unavailable until the next
    try would start more than `patience` seconds after the first."""
    retrying = Retrying(**_policy(patience))
    with _explaining(retrying):
        return retrying(backend.migrate)


async def migrate_when_available_async(outbox: AsyncOutbox,
                                       patience: float = STARTUP_WAIT_SECONDS) -> int:
    """`migrate_when_available` for the event loop: its waits do not hold a thread, so a
    shutdown during them cancels at once."""
    retrying = AsyncRetrying(**_policy(patience))
    with _explaining(retrying):
        return await retrying(outbox.migrate)


def _policy(patience: float) -> dict[str, Any]:
    def log_wait(attempt: RetryCallState) -> None:
        assert attempt.outcome is not None  # before_sleep follows a finished attempt
        log.warning("outbox_unavailable_at_start", error=str(attempt.outcome.exception()),
                    attempt=attempt.attempt_number,
                    retry_in_seconds=round(attempt.upcoming_sleep, 2),
                    gives_up_after_seconds=patience)

    first, longest = STARTUP_BACKOFF_SECONDS
    return dict(retry=retry_if_exception_type(StoreUnavailable), stop=stop_before_delay(patience),
                wait=wait_exponential(multiplier=first, max=longest), before_sleep=log_wait,
                reraise=True)


@contextmanager
def _explaining(retrying: Retrying | AsyncRetrying) -> Iterator[None]:
    """Say how long it was tried, when it was tried more than once."""
    try:
        yield
    except StoreUnavailable as error:
        if retrying.statistics.get("attempt_number", 1) == 1:
            raise
        waited = retrying.statistics["delay_since_first_attempt"]
        raise StoreUnavailable(f"{error} (still unavailable after {waited:.0f} s of trying)") from error
