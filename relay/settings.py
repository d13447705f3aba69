"""The relay's configuration: one frozen object, read from the environment once.

`Settings.from_env()` is the only place the relay reads environment variables. It
validates everything at start-up and raises `ConfigError` naming the variable, so a
misconfigured relay refuses to start instead of failing on the first webhook.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from relay.errors import ConfigError
from relay.retry import RetryPolicy
from relay.verification import VapiHmacScheme, VapiTokenScheme

T = TypeVar("T")

PROVIDER_NAMES = ("vapi", "retell")
LOG_LEVELS = ("debug", "info", "warning", "error")


class Secret:
    """A secret string whose repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    roark_api_key: Secret
    roark_base_url: str = "https://api.roark.ai"
    roark_timeout_seconds: float = 60.0
    roark_properties: Mapping[str, Any] = field(default_factory=dict)
    roark_field_case: str = "snake"
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    database_url: str = "sqlite:///relay.db"
    database_pool_size: int = 10
    retention_days: float = 30.0
    retention_interval_seconds: float = 3600.0
    pending_age_degraded_seconds: float = 900.0

    admin_token: Secret | None = None
    redact_keys: tuple[str, ...] = ()
    strip_secrets_upstream: bool = False

    retell_api_keys: tuple[Secret, ...] = ()
    vapi_token: VapiTokenScheme | None = field(default=None, repr=False)
    vapi_hmac: VapiHmacScheme | None = field(default=None, repr=False)
    insecure_skip_verification: frozenset[str] = frozenset()

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: str = "auto"

    max_body_bytes: int = 25 * 1024 * 1024
    body_timeout_seconds: float = 30.0
    store_retry_after_seconds: int = 5

    forward_concurrency: int = 128
    lease_seconds: float = 120.0
    poll_interval_seconds: float = 1.0
    auth_pause_seconds: float = 300.0
    shutdown_grace_seconds: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        api_key = env.text("ROARK_API_KEY")
        if not api_key:
            raise ConfigError("ROARK_API_KEY", "is required (your Roark API key)")
        timeout = env.number("ROARK_TIMEOUT_SECONDS", 60.0, float, minimum=1)
        lease = env.number("RELAY_LEASE_SECONDS", timeout * 2, float, minimum=1)
        if lease <= timeout:
            raise ConfigError(
                "RELAY_LEASE_SECONDS",
                f"must exceed ROARK_TIMEOUT_SECONDS ({timeout:g}) or a slow delivery "
                "could be claimed twice",
            )
        retry_defaults = RetryPolicy()
        return cls(
            roark_api_key=Secret(api_key),
            roark_base_url=env.url("ROARK_BASE_URL", "https://api.roark.ai"),
            roark_timeout_seconds=timeout,
            roark_properties=env.json_object("ROARK_PROPERTIES"),
            roark_field_case=env.choice("ROARK_FIELD_CASE", "snake", ("snake", "camel")),
            sources=env.sources(),
            database_url=env.database_url(),
            database_pool_size=env.number("RELAY_DATABASE_POOL_SIZE", 10, int, minimum=1, maximum=100),
            retention_days=env.number("RELAY_RETENTION_DAYS", 30.0, float, minimum=0),
            retention_interval_seconds=env.number(
                "RELAY_RETENTION_INTERVAL_SECONDS", 3600.0, float, minimum=1
            ),
            pending_age_degraded_seconds=env.number(
                "RELAY_PENDING_AGE_DEGRADED_SECONDS", 900.0, float, minimum=1
            ),
            admin_token=env.admin_token(),
            redact_keys=tuple(k.strip() for k in (env.text("RELAY_REDACT_KEYS") or "").split(",") if k.strip()),
            strip_secrets_upstream=env.flag("RELAY_STRIP_SECRETS_UPSTREAM"),
            retell_api_keys=env.secrets("RETELL_API_KEY"),
            vapi_token=env.vapi_token(),
            vapi_hmac=env.vapi_hmac(),
            insecure_skip_verification=env.providers("RELAY_INSECURE_SKIP_VERIFICATION"),
            host=env.text("RELAY_HOST") or "127.0.0.1",
            port=env.number("PORT", 8000, int, minimum=0, maximum=65535),
            log_level=env.choice("RELAY_LOG_LEVEL", "info", LOG_LEVELS),
            log_format=env.choice("RELAY_LOG_FORMAT", "auto", ("auto", "json", "console")),
            max_body_bytes=env.number("RELAY_MAX_BODY_BYTES", 25 * 1024 * 1024, int, minimum=1024),
            body_timeout_seconds=env.number("RELAY_BODY_TIMEOUT_SECONDS", 30.0, float, minimum=0.1),
            forward_concurrency=env.number("RELAY_FORWARD_CONCURRENCY", 128, int, minimum=1, maximum=512),
            lease_seconds=lease,
            poll_interval_seconds=env.number("RELAY_POLL_INTERVAL_SECONDS", 1.0, float, minimum=0.01),
            auth_pause_seconds=env.number("RELAY_AUTH_PAUSE_SECONDS", 300.0, float, minimum=0.1),
            shutdown_grace_seconds=env.number("RELAY_SHUTDOWN_GRACE_SECONDS", 10.0, float, minimum=0),
            retry=RetryPolicy(
                max_attempts=env.number(
                    "RELAY_RETRY_MAX_ATTEMPTS", retry_defaults.max_attempts, int, minimum=1
                ),
                base_delay=env.number(
                    "RELAY_RETRY_BASE_SECONDS", retry_defaults.base_delay, float, minimum=0
                ),
                max_delay=env.number(
                    "RELAY_RETRY_MAX_DELAY_SECONDS", retry_defaults.max_delay, float, minimum=0
                ),
            ),
        )

    def verification_missing(self, provider: str) -> bool:
        """True when the provider has no secret configured and is not explicitly opted out."""
        if provider in self.insecure_skip_verification:
            return False
        if provider == "retell":
            return not self.retell_api_keys
        return self.vapi_token is None and self.vapi_hmac is None


class _Env:
    """Typed, validated reads of environment variables; every error names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def number(
        self,
        name: str,
        default: T,
        kind: Callable[[str], T],
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(name, f"must be a {kind.__name__}, got {raw!r}") from None
        if value != value or (minimum is not None and value < minimum):  # NaN fails too
            raise ConfigError(name, f"must be at least {minimum}, got {raw!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(name, f"must be at most {maximum}, got {raw!r}")
        return value

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "false").lower()
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {raw!r}")

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.text(name) or default).lower()
        if value not in allowed:
            raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.text(name) or default
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(name, f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")

    def json_object(self, name: str) -> dict[str, Any]:
        raw = self.text(name)
        if raw is None:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise ConfigError(name, "must be a JSON object, e.g. {\"env\": \"prod\"}") from None
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a JSON object, e.g. {\"env\": \"prod\"}")
        return value

    def sources(self) -> dict[str, dict[str, Any]]:
        sources = self.json_object("RELAY_SOURCES")
        for name, properties in sources.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) or not isinstance(properties, dict):
                raise ConfigError(
                    "RELAY_SOURCES",
                    'must map source names (letters, digits, _ -) to objects, e.g. '
                    '{"acme": {"business_name": "Acme"}}',
                )
        return sources

    def secrets(self, name: str) -> tuple[Secret, ...]:
        """Comma-separated values, so a secret can be rotated without downtime."""
        raw = self.text(name) or ""
        return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())

    def providers(self, name: str) -> frozenset[str]:
        raw = self.text(name) or ""
        chosen = frozenset(p.strip().lower() for p in raw.split(",") if p.strip())
        unknown = chosen - set(PROVIDER_NAMES)
        if unknown:
            raise ConfigError(name, f"unknown provider(s) {sorted(unknown)}; use vapi, retell")
        return chosen

    def database_url(self) -> str:
        # Heroku's Postgres add-on sets DATABASE_URL; our own variable wins when both are set.
        name = "RELAY_DATABASE_URL" if self.text("RELAY_DATABASE_URL") else "DATABASE_URL"
        raw = self.text(name) or "sqlite:///relay.db"
        scheme = urlsplit(raw).scheme
        if scheme == "":
            return f"sqlite:///{raw}"  # a bare path is a SQLite file
        if scheme in ("postgres", "postgresql"):
            return raw
        if scheme != "sqlite" or not raw.startswith("sqlite:///") or raw == "sqlite:///":
            raise ConfigError(
                name,
                "must be sqlite:///path/to/file.db, a file path, or postgresql://..., "
                f"got scheme {scheme!r}",
            )
        return raw

    def admin_token(self) -> Secret | None:
        token = self.text("RELAY_ADMIN_TOKEN")
        if token is not None and len(token) < 16:
            raise ConfigError("RELAY_ADMIN_TOKEN", "must be at least 16 characters (use a random string)")
        return None if token is None else Secret(token)

    def vapi_token(self) -> VapiTokenScheme | None:
        tokens = self.secrets("VAPI_SECRET")
        if not tokens:
            return None
        try:
            return VapiTokenScheme(
                tokens=tuple(t.reveal() for t in tokens),
                header=self.text("VAPI_SECRET_HEADER"),
                prefix=self._environ.get("VAPI_SECRET_PREFIX"),
            )
        except ValueError as error:  # e.g. a prefix without a header to apply it to
            raise ConfigError("VAPI_SECRET_PREFIX", str(error)) from None

    def vapi_hmac(self) -> VapiHmacScheme | None:
        secrets = self.secrets("VAPI_HMAC_SECRET")
        if not secrets:
            return None
        default = {f.name: f.default for f in dataclasses.fields(VapiHmacScheme)}
        options = dict(
            algorithm=self.choice("VAPI_HMAC_ALGORITHM", default["algorithm"], ("sha256", "sha512", "sha1")),
            signature_header=self.text("VAPI_HMAC_SIGNATURE_HEADER") or default["signature_header"],
            timestamp_header=self.text("VAPI_HMAC_TIMESTAMP_HEADER") or default["timestamp_header"],
            encoding=self.choice("VAPI_HMAC_ENCODING", default["encoding"], ("hex", "base64")),
            prefix=self._environ.get("VAPI_HMAC_PREFIX", default["prefix"]),
            secret_is_base64=self.flag("VAPI_HMAC_SECRET_BASE64"),
            payload_template=self.text("VAPI_HMAC_PAYLOAD_TEMPLATE") or default["payload_template"],
        )
        try:
            return VapiHmacScheme(secrets=tuple(s.reveal() for s in secrets), **options)
        except ValueError as error:  # e.g. a secret that is not valid base64
            raise ConfigError("VAPI_HMAC_SECRET", str(error)) from None
