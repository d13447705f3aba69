"""Settings declared once: a dataclass field whose metadata names its environment
variable, parses and bounds its text, and explains it.

    @dataclass(frozen=True)
    class Example:
        port: int = setting("PORT", 8000, Integer(0, 65535), "Port to listen on.")

`read(Example, environ)` builds any such dataclass in one loop, and `document(Example)`
writes its part of config/relay.env.example from the same declarations, so the name,
default, bounds and help of a setting exist in one place. Every parse error is a
`ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from relay.core import jsonbody
from relay.core.errors import ConfigError

T = TypeVar("T")
#: How msgspec places a syntax error: "JSON is malformed: <problem> (byte <offset>)".
JSON_SYNTAX = re.compile(r"(?:JSON is malformed: )?(.*) \(byte (\d+)\)")


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


# --- parsers: (variable name, raw text) -> value, with a phrase for the documentation ---


class Parser:
    @property
    def described(self) -> str:
        """The accepted values as the example file shows them ("" when the help says it all)."""
        return ""

    def __call__(self, name: str, raw: str) -> Any:
        return raw


class Text(Parser):
    pass


@dataclass(frozen=True)
class Number(Parser):
    kind: type = float
    minimum: float | None = None
    maximum: float | None = None

    def __call__(self, name: str, raw: str) -> Any:
        try:
            value = self.kind(raw)
        except ValueError:
            raise ConfigError(name, f"must be a {self.kind.__name__}, got {raw!r}") from None
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(name, f"must be a number, got {raw!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(name, f"must be at least {self.minimum:g}, got {raw!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(name, f"must be at most {self.maximum:g}, got {raw!r}")
        return value

    @property
    def described(self) -> str:
        bounds = [f"at least {self.minimum:g}" if self.minimum is not None else "",
                  f"at most {self.maximum:g}" if self.maximum is not None else ""]
        return ", ".join(b for b in bounds if b)


def Integer(minimum: float | None = None, maximum: float | None = None) -> Number:
    return Number(int, minimum, maximum)


def Seconds(minimum: float | None = None, maximum: float | None = None) -> Number:
    return Number(float, minimum, maximum)


@dataclass(frozen=True)
class Choice(Parser):
    allowed: tuple[str, ...]

    def __call__(self, name: str, raw: str) -> str:
        value = raw.lower()
        if value not in self.allowed:
            raise ConfigError(name, f"must be one of {', '.join(self.allowed)}, got {value!r}")
        return value

    @property
    def described(self) -> str:
        return " | ".join(self.allowed)


class Flag(Parser):
    described = "true | false"

    def __call__(self, name: str, raw: str) -> bool:
        value = raw.lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {raw!r}")


class Url(Parser):
    def __call__(self, name: str, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(name, f"must be an http(s) URL, got {raw!r}")
        return raw.rstrip("/")


def json_value(name: str, raw: str) -> Any:
    """The JSON document a variable holds, read by the relay's one JSON policy
    (`relay.core.jsonbody`), or a ConfigError saying where it stops being JSON."""
    data = raw.encode()
    try:
        return jsonbody.loads(data)
    except RecursionError:
        raise ConfigError(name, "is not valid JSON: nested too deeply") from None
    except ValueError as error:
        raise ConfigError(name, f"is not valid JSON: {_json_problem(data, str(error))}") from None


def _json_problem(data: bytes, message: str) -> str:
    """msgspec's message, with its byte offset as the line and column an editor shows."""
    match = JSON_SYNTAX.fullmatch(message)
    if match is None:  # msgspec's "Input data was truncated" and the like: no offset
        return f"{message[:1].lower()}{message[1:]}: a bracket, brace or quote is left open"
    offset = int(match[2])
    before = data[:offset].decode(errors="replace").split("\n")
    quotes = " (JSON takes double quotes, not single)" if data[offset:offset + 1] == b"'" else ""
    return f"{match[1]} at line {len(before)}, column {len(before[-1]) + 1}{quotes}"


@dataclass(frozen=True)
class JsonObject(Parser):
    example: str = '{"env": "prod"}'

    def __call__(self, name: str, raw: str) -> dict[str, Any]:
        value = json_value(name, raw)
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a JSON object, e.g. {self.example}")
        return value


class SecretValue(Parser):
    def __call__(self, name: str, raw: str) -> Secret:
        return Secret(raw)


class Secrets(Parser):
    """Comma-separated values, so a secret can be rotated without downtime."""

    def __call__(self, name: str, raw: str) -> tuple[Secret, ...]:
        return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Names(Parser):
    """A comma-separated list, optionally limited to known names."""

    allowed: tuple[str, ...] | None = None

    def __call__(self, name: str, raw: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in raw.split(",") if part.strip())
        if self.allowed is not None:
            chosen = tuple(part.lower() for part in chosen)
            unknown = sorted(set(chosen) - set(self.allowed))
            if unknown:
                raise ConfigError(name, f"unknown value(s) {unknown}; use {', '.join(self.allowed)}")
        return chosen


# --- declaring and reading ---------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    name: str
    parse: Parser
    help: str
    #: Another variable read when `name` is unset (Heroku's DATABASE_URL).
    fallback: str | None = None
    #: Shown in the example instead of the default (required or computed settings).
    example: str | None = None
    #: Shown in the example for a value only the operator has, and refused if left as is.
    placeholder: str | None = None
    required: bool = False
    #: Kept as given, surrounding spaces included, and set even when empty (prefixes).
    verbatim: bool = False
    #: Starts a section of the example file.
    section: str | None = None

    def raw(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """(variable actually used, its text), or None when unset."""
        for name in (self.name, self.fallback):
            if name is None or name not in environ:
                continue
            value = environ[name]
            if self.verbatim:
                return name, value
            if value.strip():
                return name, value.strip()
        return None


def setting(name: str, default: Any, parse: Parser, help: str, *,
            in_repr: bool = True, **options: Any) -> Any:
    """A dataclass field read from environment variable `name` (`in_repr=False` for text
    that may hold a credential but is not a Secret, such as a proxy URL)."""
    var = Var(name, parse, " ".join(help.split()), **options)
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"var": var},
                                 repr=in_repr)
    return dataclasses.field(default=default, metadata={"var": var}, repr=in_repr)


def variables(cls: type) -> list[tuple[dataclasses.Field, Var]]:
    return [(f, f.metadata["var"]) for f in dataclasses.fields(cls) if "var" in f.metadata]


def read(cls: type[T], environ: Mapping[str, str], optional: frozenset[str] = frozenset(),
         **given: Any) -> T:
    """An instance of `cls` with every declared setting read from `environ` (those named
    in `optional` may be missing even when declared required)."""
    values = dict(given)
    for f, var in variables(cls):
        found = var.raw(environ)
        if found is not None and found[1] == var.placeholder:
            if var.name not in optional:
                raise ConfigError(found[0], f"still holds the example's placeholder {var.placeholder!r}; "
                                            f"replace it with {var.help[0].lower()}{var.help[1:]}")
            found = None  # not needed here, and not a value either
        if found is None:
            if var.required and var.name not in optional:
                raise ConfigError(var.name, f"is required ({var.help.splitlines()[0].rstrip('.')})")
            continue
        values[f.name] = var.parse(*found)
    return cls(**values)


# --- documenting -------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) or abs(value) >= 1e15 else str(int(value))
    if isinstance(value, dict):
        return json.dumps(value) if value else ""
    if isinstance(value, (tuple, list, frozenset, set)):
        return ",".join(sorted(value) if isinstance(value, (set, frozenset)) else value)
    return str(value)


def document(cls: type) -> list[str]:
    """Lines of the example file for `cls`: help as comments, then `# NAME=default`."""
    lines: list[str] = []
    for f, var in variables(cls):
        if var.section:
            lines += ["", f"# --- {var.section} " + "-" * max(3, 84 - len(var.section))]
        help_text = var.help
        if var.parse.described:
            help_text += f" ({var.parse.described})"
        lines += ["# " + line for line in textwrap.wrap(help_text, 86, break_on_hyphens=False)]
        value = var.placeholder if var.placeholder is not None else var.example
        value = shown(default_of(f)) if value is None else value
        lines.append(f"{'' if var.required else '# '}{var.name}={value}")
        if var.fallback:
            lines.append(f"# {var.fallback}=")
    return lines


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default

