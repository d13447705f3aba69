"""Destinations: the team's own endpoints, beside Roark, each owed its own durable,
signed copy of the webhooks it asks for: what they are, as configured, and which of them
a webhook is owed to (sending is relay.forwarding.destination's)."""

from relay.destinations.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_SECONDS,
    Destination,
    Destinations,
    new_secret,
    owed,
)

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_TIMEOUT_SECONDS", "Destination", "Destinations", "new_secret", "owed"]
