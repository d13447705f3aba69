"""Destinations: the team's own endpoints, beside Roark, each owed its own durable,
signed copy of the webhooks it asks for: what they are, as configured, and which of them
a webhook is owed to (sending is relay.forwarding.destination's); and the channels
alerts go to (RELAY_ALERTS, relay.alerts)."""

from relay.destinations.channels import ALERT_KINDS, Channel, Channels
from relay.destinations.config import (
    CLASSIFICATIONS,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_SECONDS,
    RESULT_KINDS,
    Destination,
    Destinations,
    When,
    new_secret,
    owed,
)

__all__ = ["ALERT_KINDS", "CLASSIFICATIONS", "DEFAULT_CONCURRENCY", "DEFAULT_TIMEOUT_SECONDS", "RESULT_KINDS",
           "Channel", "Channels", "Destination", "Destinations", "When", "new_secret", "owed"]
