"""The outbox by hand: `deliveries list` and `deliveries show`, `replay`, `prune`."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time

import click

from relay.admin.api import RETRYING, state_selection
from relay.admin.operations import STATES
from relay.admin.views import delivery_json, masked_payload
from relay.cli.common import load_settings, opened_outbox, parse_duration
from relay.core.redaction import Redactor
from relay.core.timefmt import iso
from relay.forwarding import retention
from relay.outbox import AsyncOutbox, Backend, DeliveryFilter, State
from relay.providers import PROVIDER_NAMES


@click.group()
def deliveries() -> None:
    """Inspect the outbox: what was received and whether it reached Roark."""


@deliveries.command("list")
@click.option("--state", type=click.Choice([*STATES, RETRYING]), multiple=True,
              help=f"Only deliveries in this state (repeatable); {RETRYING}: pending ones tried at least "
                   "once, as on the status page.")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), help="Only this provider's deliveries.")
@click.option("--destination", metavar="NAME", help="Only deliveries to this destination (roark, or a name "
                                                    "from RELAY_DESTINATIONS).")
@click.option("--call-id", help="Only calls whose id starts with this.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="How many to show.")
@click.option("--before", "before_id", type=int, help="Page: only deliveries with a smaller id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_deliveries(state: tuple[str, ...], provider: str | None, destination: str | None,
                    call_id: str | None, limit: int, before_id: int | None, as_json: bool) -> None:
    """List deliveries, newest first."""
    if RETRYING in state and len(state) > 1:
        raise click.BadParameter(f"{RETRYING} (pending, tried at least once) goes alone", param_hint="--state")
    states, tried = state_selection(state)
    where = DeliveryFilter(states, provider, destination, call_id, tried=tried)
    with opened_outbox(load_settings(forwarding=False), existing=True) as backend:
        rows = backend.list_deliveries(where, before_id, limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(delivery_json(row)))
        return
    if not rows:
        click.echo("no deliveries match")
        return
    click.echo(f"{'ID':>7}  {'PROVIDER':8}  {'TO':12}  {'STATE':10}  {'RECEIVED':20}  {'TRIES':>5}  {'LAST':>4}  "
               "CALL ID / LAST ERROR")
    for row in rows:
        line = (f"{row.id:>7}  {row.provider:8}  {row.destination:12}  {row.state.value:10}  "
                f"{iso(row.received_at):20}  {row.attempts:>5}  {row.last_status or '-':>4}  {row.call_id or '-'}")
        if row.state is State.FAILED and row.last_error:
            line += f"  {textwrap.shorten(row.last_error, 80, placeholder=' ...')}"
        click.echo(line)
    if len(rows) == limit:
        click.echo(f"more: relay deliveries list --before {rows[-1].id}")


@deliveries.command("show")
@click.argument("delivery_id", type=int)
def show_delivery(delivery_id: int) -> None:
    """Show one delivery: its state, attempt history and payload (secrets masked)."""
    settings = load_settings(forwarding=False)
    with opened_outbox(settings, existing=True) as backend:
        delivery = backend.get(delivery_id)
        if delivery is None:
            click.echo(f"relay: no delivery {delivery_id}", err=True)
            sys.exit(1)
        attempts = backend.attempts(delivery_id)
    for key, value in delivery_json(delivery).items():
        click.echo(f"{key:>16}: {'-' if value is None else value}")
    click.echo("\nattempts:")
    for a in attempts or []:
        click.echo(f"  #{a.attempt} {iso(a.started_at)} {a.duration_ms:.0f} ms "
                   f"status={a.status_code or '-'} {a.outcome} {a.error or ''}".rstrip())
    if not attempts:
        click.echo("  none yet")
    payload, note = masked_payload(delivery.body, Redactor(settings.redact_keys))
    click.echo("\npayload (secrets masked):")
    click.echo(note or json.dumps(payload, indent=2, ensure_ascii=False))


@click.command()
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Replay every failed delivery (narrow with the options below).")
@click.option("--provider", type=click.Choice(PROVIDER_NAMES), help="With --all-failed: only this provider.")
@click.option("--destination", metavar="NAME", help="With --all-failed: only deliveries to this destination.")
@click.option("--call-id", help="With --all-failed: only calls whose id starts with this.")
def replay(delivery_ids: tuple[int, ...], all_failed: bool, provider: str | None, destination: str | None,
           call_id: str | None) -> None:
    """Send deliveries again: back to pending, attempts reset, due now.

    Safe while the relay runs: deliveries being sent right now are left alone, and
    replaying twice is the same as once.
    """
    if bool(delivery_ids) == all_failed:
        raise click.UsageError("give delivery ids, or --all-failed")
    if delivery_ids and (provider or destination or call_id):
        raise click.UsageError("--provider, --destination and --call-id narrow --all-failed only")
    where = DeliveryFilter((State.FAILED,), provider, destination, call_id) if all_failed else DeliveryFilter()
    with opened_outbox(load_settings(forwarding=False), existing=True) as backend:
        replayed = backend.replay(list(delivery_ids) if delivery_ids else None, where, time.time())
        skipped = sorted(set(delivery_ids) - set(replayed))
        unknown = [delivery_id for delivery_id in skipped if backend.get(delivery_id) is None]
    left = [delivery_id for delivery_id in skipped if delivery_id not in unknown]
    if replayed or left or not unknown:  # not "replayed 0" before saying none of them exists
        click.echo(f"replayed {len(replayed)} deliver{'y' if len(replayed) == 1 else 'ies'}"
                   + (f": {', '.join(map(str, replayed))}" if replayed else ""))
    if left:
        click.echo(f"not replayed (delivered or being delivered): {', '.join(map(str, left))}")
    if unknown:
        click.echo(f"relay: no delivery {', '.join(map(str, unknown))}", err=True)
        sys.exit(1)


@click.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Delete deliveries received longer ago than this, e.g. 30d, 12h.")
@click.option("--failed", is_flag=True, help="Also delete failed deliveries (they are kept otherwise).")
def prune(older_than: str, failed: bool) -> None:
    """Delete old delivered deliveries (and, with --failed, old failed ones)."""
    cutoff = time.time() - parse_duration(older_than)
    states = [State.DELIVERED, State.FAILED] if failed else [State.DELIVERED]
    settings = load_settings(forwarding=False)

    async def prune_in_batches(backend: Backend) -> int:
        store = AsyncOutbox(backend)
        try:  # a few hundred at a time: a relay serving meanwhile goes on storing webhooks
            return await retention.prune(store, cutoff, states, settings.retention_pause_seconds)
        finally:
            await store.close()

    with opened_outbox(settings, existing=True) as backend:
        deleted = asyncio.run(prune_in_batches(backend))
    click.echo(f"deleted {deleted} deliveries received before {iso(cutoff)}")


COMMANDS = (deliveries, replay, prune)
