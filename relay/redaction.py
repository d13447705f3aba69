"""Masking secrets inside provider payloads before anyone sees them.

VAPI reports can carry the customer's Twilio credentials (`phoneNumber.twilioAuthToken`,
`twilioApiSecret`). Payloads are shown on the status page and CLI; they must never show
such values. A key is secret when its name is in a known list, in the operator's list
(`RELAY_REDACT_KEYS`), or looks like a credential (secret, password, api key, ...).
Only string values are masked: `promptTokens: 2104` is a count, not a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "********"

KNOWN_SECRET_KEYS = frozenset({
    "twilioauthtoken", "twilioapisecret", "twilioapikey", "vonageapisecret", "authtoken",
    "apikey", "api_key", "secret", "password", "authorization", "credentials",
})
_LOOKS_SECRET = re.compile(
    r"secret|passw(or)?d|api[-_]?key|auth[-_]?token|access[-_]?token|refresh[-_]?token|"
    r"private[-_]?key|client[-_]?secret|credential|authorization|bearer|signature",
    re.IGNORECASE,
)


class Redactor:
    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self._keys = KNOWN_SECRET_KEYS | {key.lower() for key in extra_keys}

    def is_secret_key(self, key: str) -> bool:
        return key.lower() in self._keys or bool(_LOOKS_SECRET.search(key))

    def mask(self, document: Any) -> Any:
        """A copy of `document` with every secret string value replaced by MASK."""
        try:
            return self._walk(document, mask=True)
        except RecursionError:  # nested nearly as deep as json.loads allows: show nothing
            return MASK

    def strip(self, document: Any) -> Any:
        """A copy of `document` without the secret keys at all (for forwarding)."""
        return self._walk(document, mask=False)

    def _walk(self, value: Any, mask: bool) -> Any:
        if isinstance(value, dict):
            result = {}
            for key, item in value.items():
                if isinstance(item, str) and self.is_secret_key(str(key)):
                    if mask:
                        result[key] = MASK
                    continue
                result[key] = self._walk(item, mask)
            return result
        if isinstance(value, list):
            return [self._walk(item, mask) for item in value]
        return value
