"""The names the relay gives its destinations, the same wherever one is named: in the
configuration, the outbox, the admin API and its OpenAPI document, the CLI."""

from __future__ import annotations

#: The built-in destination: Roark's import endpoints.
ROARK = "roark"
#: What the name of one of RELAY_DESTINATIONS may be (a regular expression, whole).
DESTINATION_NAME = "[a-z0-9_-]{1,32}"
