"""Helpers shared by every tier: test credentials, signed samples, polling."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from relay.providers import samples as webhooks
from relay.providers.samples import sample, with_call_id

__all__ = [
    "eventually",
    "free_port",
    "fresh_schema",
    "in_schema",
    "retell_headers",
    "sample",
    "vapi_headers",
    "with_call_id",
]

SHARED = Path(__file__).resolve().parents[2] / "shared"

ROARK_KEY = "rk_test_0123456789"
RETELL_KEY = "retell_key_abcdef"
VAPI_SECRET = "vapi_shared_secret_xyz"


def retell_headers(body: bytes, key: str = RETELL_KEY, now: float | None = None) -> dict[str, str]:
    return webhooks.retell_headers(body, key, now)


def vapi_headers(secret: str = VAPI_SECRET) -> dict[str, str]:
    return webhooks.vapi_headers(secret)


def eventually(condition, timeout: float = 15.0, interval: float = 0.02, message: str = ""):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds.

    For state the test cannot be notified about (a row in another process's database).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_schema(url: str, schema: str) -> str:
    """`url` with libpq `options` making `schema` the connections' search_path."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new, empty schema for one test: yields a URL whose connections use it, and
    drops it with everything in it afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield in_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '10s'")  # never hang the suite on a leaked session
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def relay_process(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`relay ...` as a user runs it: a process of its own, in `cwd` (where a .env would
    be read), with nothing in its environment but `env` and PATH."""
    return subprocess.run([sys.executable, "-m", "relay", *args], env={"PATH": os.environ["PATH"], **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)
