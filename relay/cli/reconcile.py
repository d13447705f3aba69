"""`relay reconcile`: one reconciliation run now, in this process, printing what it found."""

from __future__ import annotations

import asyncio
import sys

import click

from relay.cli.common import load_settings, opened_outbox, parse_duration, parse_time
from relay.providers import PROVIDER_NAMES


@click.command()
@click.option("--provider", type=click.Choice(PROVIDER_NAMES),
              help="Only this provider (default: every provider whose API key is set).")
@click.option("--since", metavar="AGE", help="Look at calls that ended in this last span, e.g. 24h, "
                                             "instead of going on from the last run.")
@click.option("--from", "start", metavar="TIME", help="Look at calls that ended from this time on "
                                                      "(ISO 8601, UTC unless it says), instead of going on "
                                                      "from the last run.")
@click.option("--to", "end", metavar="TIME", help="With --from: until this time (default: now).")
@click.option("--dry-run", is_flag=True, help="Only say what would be queued; store nothing.")
def reconcile(provider: str | None, since: str | None, start: str | None, end: str | None,
              dry_run: bool) -> None:
    """Ask the providers' APIs which calls ended, and queue those whose webhook never
    came: one run now, printing what it found (calls listed, ended, already held,
    queued). Without a window it is the run the relay would make next and goes on
    from the last one; with --since or --from it looks at that window only, leaving the
    schedule alone. Calls that ended in the last RELAY_RECONCILE_GRACE_SECONDS are
    always left for their webhook.

    Exits 0 when every provider was reconciled, 1 when a provider's API refused the
    key or could not be reached (or the outbox was unavailable), 2 on a configuration
    or usage error."""
    from relay.reconciliation.command import chooser, chosen_providers, reconcile_now

    if since and (start or end):
        raise click.UsageError("give --since or --from/--to, not both")
    if end and not start:
        raise click.UsageError("--to needs --from")
    settings = load_settings(forwarding=False)
    try:
        names = chosen_providers(settings, provider)
    except ValueError as error:
        click.echo(f"relay: {error}", err=True)
        sys.exit(2)
    try:
        window = chooser(settings.reconcile_grace_seconds, parse_duration(since) if since else None,
                         parse_time(start) if start else None, parse_time(end) if end else None)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    with opened_outbox(settings) as backend:
        succeeded = asyncio.run(reconcile_now(settings, backend, names, window, dry_run,
                                              lambda line, error: click.echo(line, err=error)))
    sys.exit(0 if succeeded else 1)


COMMANDS = (reconcile,)
