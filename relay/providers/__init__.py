"""The providers the relay takes webhooks from, by name.

Adding one means writing its module (a `Provider` subclass, see `base.py`) and listing
it here; nothing else in the relay names a provider.
"""

from __future__ import annotations

from relay.providers.base import Envelope, Provider, RoarkEndpoint
from relay.providers.retell import RETELL
from relay.providers.vapi import VAPI

PROVIDERS: dict[str, Provider] = {p.name: p for p in (VAPI, RETELL)}
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDERS)

__all__ = ["PROVIDERS", "PROVIDER_NAMES", "Envelope", "Provider", "RoarkEndpoint"]
