"""The parsers of the relay's own kinds of value: a database URL, sources, an admin token.
The general ones (seconds, integers, URLs, JSON, secrets) are in relay.core.envvars."""

from __future__ import annotations

import math
import re
import string
from typing import Any
from urllib.parse import urlsplit

from relay.core.envvars import JsonObject, Parser, Secret
from relay.core.errors import ConfigError


class DatabaseUrl(Parser):
    def __call__(self, name: str, raw: str) -> str:
        scheme = urlsplit(raw).scheme
        if scheme == "":
            return f"sqlite:///{raw}"  # a bare path is a SQLite file
        if scheme in ("postgres", "postgresql"):
            return raw
        if scheme != "sqlite":
            raise ConfigError(name, "must be sqlite:///path/to/file.db, a file path, or postgresql://..., "
                                    f"got scheme {scheme!r}")
        path = raw.removeprefix("sqlite:").lstrip("/")
        if not path:
            raise ConfigError(name, "names no file: use sqlite:///relay.db, or sqlite:////abs/path/relay.db")
        if not raw.startswith("sqlite:///"):
            # sqlite://relay.db reads as a host named relay.db, and no file at all.
            raise ConfigError(name, f"{raw} has too few slashes: a SQLite URL has three before a path relative to "
                                    f"the working directory (sqlite:///{path}) and four before an absolute "
                                    "one (sqlite:////abs/path/to/file.db)")
        return raw


class Sources(JsonObject):
    def __call__(self, name: str, raw: str) -> dict[str, Any]:
        sources = super().__call__(name, raw)
        for source, properties in sources.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", source) or not isinstance(properties, dict):
                raise ConfigError(name, "must map source names (letters, digits, _ -) to objects, "
                                        'e.g. {"acme": {"business_name": "Acme"}}')
        return sources


#: Character classes and their sizes, for estimating how guessable a token is.
TOKEN_CLASSES = ((string.ascii_lowercase, 26), (string.ascii_uppercase, 26), (string.digits, 10))
OTHER_CHARACTERS = 33  # printable ASCII punctuation and space
MIN_TOKEN_BITS = 64
MIN_TOKEN_DISTINCT = 10


def token_bits(token: str) -> float:
    """length × log2(size of the character classes it uses): what a random token of its
    kind would hold. An overestimate for anything chosen by a person, hence the rule on
    distinct characters too."""
    pool = sum(size for chars, size in TOKEN_CLASSES if any(c in chars for c in token))
    if any(not any(c in chars for chars, _ in TOKEN_CLASSES) for c in token):
        pool += OTHER_CHARACTERS
    return len(token) * math.log2(pool) if pool else 0.0


class AdminToken(Parser):
    described = (f"at least 16 characters, {MIN_TOKEN_DISTINCT} different ones, "
                 f"{MIN_TOKEN_BITS} bits by its character classes")

    def __call__(self, name: str, raw: str) -> Secret:
        if len(raw) < 16:
            raise ConfigError(name, "must be at least 16 characters (use a random string)")
        if len(set(raw)) < MIN_TOKEN_DISTINCT or token_bits(raw) < MIN_TOKEN_BITS:
            raise ConfigError(name, f"is too easy to guess: use {MIN_TOKEN_DISTINCT} or more different "
                                    f"characters and {MIN_TOKEN_BITS} bits or more; python3 -c 'import "
                                    "secrets; print(secrets.token_urlsafe(24))' makes one")
        return Secret(raw)
