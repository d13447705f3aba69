"""What the commands share: settings or a one-line error, a port checked before anything
starts, the outbox opened and migrated, and how ages and times are typed on a command line."""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import click

from relay.core.errors import ConfigError, StoreUnavailable
from relay.outbox import Backend, open_backend
from relay.outbox.sqlite import SQLiteBackend
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


def require_free_port(command: str, host: str, port: int, choose: str) -> None:
    """End the command with a message when `host:port` cannot be listened on; `choose`
    says how to pick another port. Checked before anything starts: a server that cannot
    bind would otherwise fail after starting its forwarding process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: a port left in TIME_WAIT by an earlier run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                click.echo(f"{command}: port {port} is in use; choose another with {choose}", err=True)
            else:
                click.echo(f"{command}: cannot listen on {host}:{port}: {error.strerror or error}", err=True)
            sys.exit(1)


@contextmanager
def opened_outbox(settings: Settings, patience: float = 0.0, *, existing: bool = False) -> Iterator[Backend]:
    """The configured outbox, migrated once it is available (waiting at most `patience`
    seconds); store failures end the command with a message. `existing`: the command
    only reads or repairs what the relay stored, so a SQLite file that is not there is
    a mistaken RELAY_DATABASE_URL, said so, never an empty outbox made."""
    backend = open_backend(settings.database_url, pool_size=settings.database_pool_size)
    if existing and isinstance(backend, SQLiteBackend) and not os.path.exists(backend.path):
        backend.close()
        click.echo(f"relay: the database {os.path.abspath(backend.path)} does not exist (RELAY_DATABASE_URL "
                   f"is {settings.database_url}); set RELAY_DATABASE_URL to the relay's database. This "
                   "command only reads or repairs one, and creates none.", err=True)
        sys.exit(1)
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
