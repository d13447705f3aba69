"""Destinations: the team's own endpoints, beside Roark, each owed its own durable,
signed copy of the webhooks it asks for (config.py: what they are; client.py: sending)."""

from relay.destinations.config import Destination, Destinations, new_secret, owed

__all__ = ["Destination", "Destinations", "new_secret", "owed"]
