"""Per-source properties: one relay serving several agents or customers.

A webhook URL can say where a call came from, and that is sent to Roark as
`properties`, so calls can be told apart there:

- query parameters: `/webhooks/vapi?business_name=Acme&campaign=spring`;
- a named source: `/webhooks/vapi/acme`, with `RELAY_SOURCES={"acme": {"business_name": "Acme"}}`.

Query parameters override the named source's, which override `ROARK_PROPERTIES`. The
URL is not covered by the providers' signatures, so what it may carry is bounded, and
`RELAY_QUERY_PROPERTIES=false` refuses query strings: whoever first delivers a captured
webhook would otherwise choose the properties Roark files the call under. A named
source cannot be chosen that way to say anything its operator did not configure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from relay.core.errors import BadRequest, NotFound

MAX_PARAMETERS = 20
MAX_VALUE_LENGTH = 256
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def source_properties(
    sources: Mapping[str, Mapping[str, Any]],
    source: str | None,
    query: list[tuple[str, str]],
    query_properties: bool = True,
) -> dict[str, Any]:
    """Properties this webhook's URL asks for (without the global ones)."""
    if query and not query_properties:
        # Refused rather than ignored: a URL still carrying properties would otherwise
        # file its calls in Roark without them, and nobody would notice.
        raise BadRequest("query parameters on webhook URLs are turned off (RELAY_QUERY_PROPERTIES=false); "
                         "use a named source: /webhooks/<provider>/<source>",
                         error_code="query_properties_disabled")
    properties: dict[str, Any] = {}
    if source is not None:
        if source not in sources:
            raise NotFound(f"no source named {source[:64]!r}; configure it in RELAY_SOURCES")
        properties.update(sources[source])
    if len(query) > MAX_PARAMETERS:
        raise BadRequest(f"at most {MAX_PARAMETERS} query parameters", error_code="invalid_properties")
    seen = set()
    for key, value in query:
        if not _KEY.fullmatch(key):
            raise BadRequest("query parameter names must be letters, digits, _ . - (at most 64)",
                             error_code="invalid_properties", parameter=key[:64])
        if key in seen:
            raise BadRequest("a query parameter is repeated", error_code="invalid_properties", parameter=key)
        if len(value) > MAX_VALUE_LENGTH or not value.isprintable():
            raise BadRequest(f"query parameter values must be printable, at most {MAX_VALUE_LENGTH} characters",
                             error_code="invalid_properties", parameter=key)
        seen.add(key)
        properties[key] = value
    return properties
