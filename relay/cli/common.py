"""What the commands share: settings or a one-line error, the outbox opened and migrated,
and how ages and times are typed on a command line."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import click

from relay.core.errors import ConfigError, StoreUnavailable
from relay.outbox import Backend, open_backend
from relay.outbox.startup import migrate_when_available
from relay.settings import Settings

DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def load_settings(forwarding: bool = True) -> Settings:
    """Settings from the environment, or a one-line error naming the variable.
    `forwarding=False`: a command that only reads or repairs the outbox."""
    try:
        return Settings.from_env(forwarding=forwarding)
    except ConfigError as error:
        click.echo(f"relay: configuration error: {error}", err=True)
        sys.exit(2)


@contextmanager
def opened_outbox(settings: Settings, patience: float = 0.0) -> Iterator[Backend]:
    """The configured outbox, migrated once it is available (waiting at most `patience`
    seconds); store failures end the command with a message."""
    backend = open_backend(settings.database_url, pool_size=settings.database_pool_size)
    try:
        migrate_when_available(backend, patience)
        yield backend
    except StoreUnavailable as error:
        click.echo(f"relay: the outbox is unavailable: {error}", err=True)
        sys.exit(1)
    finally:
        backend.close()


def parse_duration(text: str) -> float:
    """An age such as 90s, 15m, 12h or 30d, in seconds."""
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter("use a number and a unit: 90s, 15m, 12h, 30d")
    return float(match[1]) * UNIT_SECONDS[match[2]]


def parse_time(text: str) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) as epoch seconds."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-01-31T09:00Z or 2026-01-31") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def display_url(url: str) -> str:
    """A database URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
