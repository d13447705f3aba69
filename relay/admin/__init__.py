"""Operators' status page and admin API (see issue: status page, admin API and CLI)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from relay.settings import Settings


def admin_routes(settings: Settings) -> list[BaseRoute]:
    """Routes of the status page and admin API; none when RELAY_ADMIN_TOKEN is unset."""
    return []
