"""Destinations by hand: `destinations list`, `destinations resume`, and `secret` (a
signing secret for a new one)."""

from __future__ import annotations

import sys

import click

from relay.cli.common import load_settings, opened_outbox
from relay.core.timefmt import iso
from relay.destinations import new_secret
from relay.outbox import State


@click.command()
def secret() -> None:
    """Print a fresh Standard Webhooks secret (whsec_...) for a destination's "secret"."""
    click.echo(new_secret())


@click.group()
def destinations() -> None:
    """Roark and your own destinations (RELAY_DESTINATIONS): what each is owed, and
    resuming one that was stopped."""


@destinations.command("list")
def list_destinations() -> None:
    """Each destination, its deliveries by state, and whether it is stopped."""
    settings = load_settings(forwarding=False)
    with opened_outbox(settings, existing=True) as backend:
        counts = backend.counts_by_destination()
        stopped = backend.paused_destinations()
    urls = settings.destination_urls()
    for name in [*urls, *sorted(set(counts) - set(urls))]:
        per_state = counts.get(name, {})
        line = f"{name:12}  {urls.get(name, '(no longer configured)')}  " + "  ".join(
            f"{state.value}={per_state.get(state, 0)}" for state in State)
        if name in stopped:
            line += f"\n{'':12}  STOPPED since {iso(stopped[name].since)}: {stopped[name].reason}"
        click.echo(line)


@destinations.command("resume")
@click.argument("name")
def resume_destination(name: str) -> None:
    """Send to a stopped destination again (one stops when it answers 410 Gone). Every
    relay instance picks it up within a poll interval; failed deliveries stay failed
    until replayed (relay replay --all-failed --destination NAME)."""
    with opened_outbox(load_settings(forwarding=False), existing=True) as backend:
        resumed = backend.resume_destination(name)
    if not resumed:
        click.echo(f"relay: destination {name} is not stopped", err=True)
        sys.exit(1)
    click.echo(f"resumed {name}")


COMMANDS = (destinations, secret)
