"""Masking secrets inside provider payloads before anyone sees them, and stripping the
providers' credential fields before a payload leaves for Roark.

VAPI reports can carry the customer's Twilio credentials (`phoneNumber.twilioAuthToken`,
`twilioApiSecret`). Payloads are shown on the status page, admin API and CLI; they must
never show such values, so masking is generous: a key is secret when its name is a known
credential field, in the operator's list (`RELAY_REDACT_KEYS`), or looks like a
credential (secret, password, pass, pwd, api key, cookie, session id, a name ending in
"token", ...), and everything under such a key is masked, whatever its type: a secret
can be a list or an object.
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

from relay.core import jsonbody

MASK = "********"
#: Deeper than any provider's payload; a document nested further is shown as MASK, so
#: rendering it (recursive json.dumps) stays far from Python's recursion limit.
MAX_SHOWN_DEPTH = 200

#: Fields the providers use for credentials, compared case-insensitively.
CREDENTIAL_KEYS = frozenset({
    "twilioauthtoken", "twilioapisecret", "twilioapikey", "vonageapisecret", "serverurlsecret",
    "authtoken", "apikey", "api_key", "secret", "password", "authorization", "credentials",
})
_LOOKS_SECRET = re.compile(
    r"secret|passw(or)?d|pass(phrase|code)?$|pwd|api[-_]?key|token$|private[-_]?key|credential|authorization"
    r"|bearer|signature|cookie|session[-_]?id",
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

    def _suspects(self, text: bytes) -> list[int]:
        """Offsets in JSON text of every name to strip (and every escape that could spell
        one): each lies inside a string, which may be a key. Plain substring searches of
        the lowercased text cost a small fraction of a parse; a regular expression that
        tries every name at every byte costs more than the parse."""
        lowered = text.lower()  # ASCII only: each match sits at the same offset in `text`
        offsets = []
        for name in self._names:
            at = lowered.find(name)
            while at >= 0:
                offsets.append(at)
                at = lowered.find(name, at + len(name))
        if b"\\u00" in lowered:
            offsets += [match.start() for match in self._escape.finditer(lowered)]
        return sorted(offsets)

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
        """JSON text (valid: stored bodies were parsed at ingest) without the members
        `strip` removes, cut out of the text as written: nothing is decoded but the keys
        that hold a name to strip, so a 21 MB transcript beside a phone number's
        credentials costs a few substring searches, and numbers are kept as written.

        A name is found in the text first; the string around it is a key when a colon
        follows it (inside a string every quote is escaped, so the nearest unescaped
        quotes on either side are the string's own)."""
        text = bytes(memoryview(raw))
        cuts: list[tuple[int, int]] = []
        seen = -1  # the last string looked at: a string with several names is looked at once
        for at in self._suspects(text):
            if (cuts and at < cuts[-1][1]) or at < seen:
                continue  # inside a member already cut, or a string already looked at
            opening = _quote_before(text, at)
            seen = closing = _quote_after(text, at)
            colon = _skip_space(text, closing + 1)
            if text[colon:colon + 1] != b":":
                continue  # a string value, not a key
            if jsonbody.loads_as(text[opening:closing + 1], str).lower() in self._named:
                cuts.append(_member(text, opening, _value_end(text, _skip_space(text, colon + 1)), cuts))
        if not cuts:  # nothing to strip: the text is carried over as it is
            return _as_raw(raw)
        kept, start = [], 0
        for cut_start, cut_end in cuts:
            kept.append(text[start:cut_start])
            start = cut_end
        kept.append(text[start:])
        return msgspec.Raw(b"".join(kept))

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


_QUOTE, _BACKSLASH, _COMMA = ord('"'), ord("\\"), ord(",")
_SPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURE = re.compile(rb'["{}\[\]]')
_SCALAR_END = re.compile(rb"[ \t\r\n,}\]]|$")


def _escaped(text: bytes, quote: int) -> bool:
    """Whether the quote at `quote` is escaped: an odd run of backslashes before it."""
    before = quote - 1
    while before >= 0 and text[before] == _BACKSLASH:
        before -= 1
    return (quote - 1 - before) % 2 == 1


def _quote_before(text: bytes, at: int) -> int:
    quote = text.rfind(b'"', 0, at)
    while _escaped(text, quote):
        quote = text.rfind(b'"', 0, quote)
    return quote


def _quote_after(text: bytes, at: int) -> int:
    quote = text.find(b'"', at)
    while _escaped(text, quote):
        quote = text.find(b'"', quote + 1)
    return quote


def _skip_space(text: bytes, at: int) -> int:
    return _SPACE.match(text, at).end()  # type: ignore[union-attr]  # a * pattern always matches


def _value_end(text: bytes, start: int) -> int:
    """Where the value starting at `start` ends (one past its last byte)."""
    first = text[start]
    if first == _QUOTE:
        return _quote_after(text, start + 1) + 1
    if first not in b"{[":
        return _SCALAR_END.search(text, start).start()  # type: ignore[union-attr]  # …|$ always matches
    depth, at = 0, start
    while True:  # brackets counted, strings skipped whole: no recursion, however deep
        found = _STRUCTURE.search(text, at)
        assert found is not None, "valid JSON closes every bracket"
        if text[found.start()] == _QUOTE:
            at = _quote_after(text, found.end()) + 1
            continue
        depth += 1 if text[found.start()] in b"{[" else -1
        at = found.end()
        if depth == 0:
            return at


def _member(text: bytes, key: int, end: int, cuts: list[tuple[int, int]]) -> tuple[int, int]:
    """The bytes to cut for the member from `key` to `end`, so the object stays valid:
    with the comma before it, or, when it is the first member left (none before it, or
    that comma cut already), with the comma after it if there is one."""
    before = key - 1
    while text[before] in b" \t\r\n":
        before -= 1
    if text[before] == _COMMA and not (cuts and cuts[-1][0] <= before < cuts[-1][1]):
        return before, end
    after = _skip_space(text, end)
    return key, after + 1 if text[after] == _COMMA else end


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
