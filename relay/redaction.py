"""Masking secrets inside provider payloads before anyone sees them, and stripping the
providers' credential fields before a payload leaves for Roark.

VAPI reports can carry the customer's Twilio credentials (`phoneNumber.twilioAuthToken`,
`twilioApiSecret`). Payloads are shown on the status page, admin API and CLI; they must
never show such values, so masking is generous: a key is secret when its name is a known
credential field, in the operator's list (`RELAY_REDACT_KEYS`), or looks like a
credential (secret, password, api key, a name ending in "token", ...), and everything
under such a key is masked, whatever its type: a secret can be a list or an object.
`promptTokens: 2104` is a count, not a token, so names ending in "tokens" stay visible.

Stripping is narrow: only the known credential fields and the operator's keys are
removed before forwarding, because what is forwarded is the customer's call data. A
name that merely looks like a credential may be analytics Roark needs (Retell's
`llm_token_usage`), and a guess must not delete it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from relay import jsonbody

MASK = "********"
#: How deep `strip_json` decodes level by level before it decodes the rest at once.
LAZY_STRIP_DEPTH = 64
#: Deeper than any provider's payload; a document nested further is shown as MASK, so
#: rendering it (recursive json.dumps) stays far from Python's recursion limit.
MAX_SHOWN_DEPTH = 200

#: Fields the providers use for credentials, compared case-insensitively.
CREDENTIAL_KEYS = frozenset({
    "twilioauthtoken", "twilioapisecret", "twilioapikey", "vonageapisecret", "serverurlsecret",
    "authtoken", "apikey", "api_key", "secret", "password", "authorization", "credentials",
})
_LOOKS_SECRET = re.compile(
    r"secret|passw(or)?d|api[-_]?key|token$|private[-_]?key|credential|authorization|bearer|signature",
    re.IGNORECASE,
)


class Redactor:
    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self._named = CREDENTIAL_KEYS | {key.lower() for key in extra_keys}
        names = sorted(key.encode() for key in self._named)
        # Searched for as substrings: a name containing another ("twilioauthtoken",
        # "authtoken") is found through it, so only the shortest are searched.
        self._names = [name for name in names if not any(other in name for other in names if other != name)]
        # A key written with \u escapes for plain characters could hide from the names,
        # so such an escape alone is reason enough to look closer.
        self._escape = re.compile(rb"\\u00[2-7]")

    def _found(self, lowered: bytes) -> set[bytes]:
        """The names to strip (and escapes that could spell one) in lowercased JSON text.
        Plain substring searches cost a small fraction of a parse; a regular expression
        that tries every name at every byte costs more than the parse."""
        found = {name for name in self._names if name in lowered}
        if b"\\u00" in lowered:
            found.update(match.group() for match in self._escape.finditer(lowered))
        return found

    def is_secret_key(self, key: str) -> bool:
        """True when the value under `key` must be masked wherever it is shown."""
        return key.lower() in self._named or bool(_LOOKS_SECRET.search(key))

    def mask(self, document: Any) -> Any:
        """A copy of `document` with the value under every secret key replaced by MASK."""
        try:
            return self._walk(document, self._shows_secret, MASK, MAX_SHOWN_DEPTH)
        except _TooDeep:
            return MASK

    def strip_json(self, raw: bytes | msgspec.Raw) -> msgspec.Raw:
        """JSON text without the fields `strip` removes, decoding only the objects on the
        way to one: a 21 MB transcript beside a phone number's credentials is carried over
        as bytes, never turned into objects, and numbers are kept as written."""
        found = self._found(bytes(memoryview(raw)).lower())
        if not found:  # nothing to strip: the text is carried over undecoded
            return _as_raw(raw)
        return msgspec.Raw(jsonbody.dumps(self._strip_lazily(raw, found, 0)))

    def _strip_lazily(self, raw: bytes | msgspec.Raw, found: set[bytes], depth: int) -> Any:
        """`raw` with its fields to strip removed, looking inside only the values that hold
        one of `found` (what the whole text holds: no match spans two values)."""
        if depth >= LAZY_STRIP_DEPTH:  # an absurd nesting: the plain walk has no depth limit
            return self.strip(jsonbody.loads_exact(raw))
        view = memoryview(raw)
        start = next((i for i, byte in enumerate(view[:64]) if byte not in b" \t\r\n"), 0)
        opening = view[start:start + 1].tobytes()
        if opening == b"{":
            return {key: self._strip_lazily(value, found, depth + 1) if _holds(value, found) else value
                    for key, value in jsonbody.loads_as(raw, dict[str, msgspec.Raw]).items()
                    if key.lower() not in self._named}
        if opening == b"[":
            return [self._strip_lazily(item, found, depth + 1) if _holds(item, found) else item
                    for item in jsonbody.loads_as(raw, list[msgspec.Raw])]
        return _as_raw(raw)  # a string or number holds no field

    def strip(self, document: Any) -> Any:
        """A copy of `document` without the credential fields and the operator's keys (for
        forwarding)."""
        return self._walk(document, self._is_named, None, None)

    def _shows_secret(self, key: str, value: Any) -> bool:
        # A null hides nothing, and showing it tells an operator no credential was sent.
        return value is not None and self.is_secret_key(key)

    def _is_named(self, key: str, value: Any) -> bool:
        return key.lower() in self._named

    @staticmethod
    def _walk(document: Any, secret: Callable[[str, Any], bool], replacement: str | None,
              max_depth: int | None) -> Any:
        """A copy of `document` in which every entry `secret` picks is replaced (None:
        dropped). Iterative: an acknowledged body may nest as deep as the JSON parser
        allows, beyond Python's recursion limit, and must still be forwardable."""
        copy = _shell(document)
        pending = [(document, copy, 0)]
        while pending:
            source, target, depth = pending.pop()
            if max_depth is not None and depth >= max_depth:
                raise _TooDeep
            if isinstance(source, dict):
                for key, item in source.items():
                    if secret(str(key), item):
                        if replacement is not None:
                            target[key] = replacement
                        continue
                    target[key] = child = _shell(item)
                    if child is not item:
                        pending.append((item, child, depth + 1))
            else:
                for item in source:
                    target.append(child := _shell(item))
                    if child is not item:
                        pending.append((item, child, depth + 1))
        return copy


def _as_raw(raw: bytes | msgspec.Raw) -> msgspec.Raw:
    return msgspec.Raw(raw) if isinstance(raw, bytes) else raw


def _holds(raw: msgspec.Raw, found: set[bytes]) -> bool:
    """Whether a value may hold a field to strip: only an object or array can (a value
    decoded by msgspec starts with its first character, no white space)."""
    view = memoryview(raw)
    if view[:1] not in (b"{", b"["):
        return False
    lowered = bytes(view).lower()
    return any(text in lowered for text in found)


class _TooDeep(Exception):
    pass


def _shell(value: Any) -> Any:
    """An empty container of the same kind for a dict or list (filled in later); the value
    itself otherwise."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return []
    return value
