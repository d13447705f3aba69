"""The `relay` command: run the server, inspect and repair the outbox, try it out."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click
import httpx

from relay import __version__
from relay.cli import check as checks
from relay.forwarding import retention
from relay.core.errors import ConfigError, StoreUnavailable
from relay.destinations import new_secret
from relay.outbox import AsyncOutbox, Backend, DeliveryFilter, State, open_backend
from relay.outbox.startup import migrate_when_available, startup_patience
from relay.providers import PROVIDER_NAMES, PROVIDERS
from relay.core.redaction import Redactor
from relay.settings import Settings
from relay.admin.views import delivery_json, iso, masked_payload

DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def load_settings(forwarding: bool = True) -> Settings:
    """Settings from the environment, or a one-line error naming the variable.
    `forwarding=False`: a command that only reads or repairs the outbox."""
    try:
        return Settings.from_env(forwarding=forwarding)
    except ConfigError as error:
        click.echo(f"relay: configuration error: {error}", err=True)
        sys.exit(2)


@contextmanager
def outbox(settings: Settings, patience: float = 0.0) -> Iterator[Backend]:
    """The configured outbox, migrated once it is available (waiting at most `patience`
    seconds); store failures end the command with a message."""
    backend = open_backend(settings.database_url, pool_size=settings.database_pool_size)
    try:
        migrate_when_available(backend, patience)
        yield backend
    except StoreUnavailable as error:
        click.echo(f"relay: the outbox is unavailable: {error}", err=True)
        sys.exit(1)
    finally:
        backend.close()


def parse_duration(text: str) -> float:
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise click.BadParameter("use a number and a unit: 90s, 15m, 12h, 30d")
    return float(match[1]) * UNIT_SECONDS[match[2]]


@click.group()
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """Roark Relay: receive VAPI and Retell webhooks, store them durably, forward them
    to Roark Analytics.

    Configuration comes from environment variables; see config/relay.env.example.
    """


@main.command()
@click.option("--host", default=None, help="Interface to bind (default RELAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the relay: webhook endpoints, health check and status page, with a forwarding
    process beside it (RELAY_FORWARD: process, inline or off)."""
    from relay.http.server import run

    settings = load_settings()
    # The outbox is opened (and migrated) here first, so a relay that cannot start says
    # why in one line rather than in uvicorn's traceback of its lifespan.
    with outbox(settings, patience=startup_patience(settings.database_url)):
        pass
    run(settings, host=host or settings.host, port=settings.port if port is None else port)


@main.command()
@click.option("--metrics-file", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="Rewrite this file with the Prometheus exposition of what it counts.")
@click.option("--parent-pid", type=int, hidden=True, help="End when this process ends.")
def forward(metrics_file: Path | None, parent_pid: int | None) -> None:
    """Deliver stored webhooks to Roark and every destination (and reconcile, and prune),
    without serving HTTP: `relay serve` starts this beside itself unless RELAY_FORWARD
    says otherwise; run it alone, e.g. as a Heroku worker, with RELAY_FORWARD=off on
    the web processes. Stops on SIGTERM or SIGINT, handing back what is in flight."""
    from relay.core import logs
    from relay.forwarding.process import forward as run_forwarding

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    with outbox(settings, patience=startup_patience(settings.database_url)):
        pass
    run_forwarding(settings, metrics_file, parent_pid)


@main.command("settings")
def show_settings() -> None:
    """Print every setting with its default and meaning, as an environment file (this
    is config/relay.env.example)."""
    from relay.settings import example_file

    click.echo(example_file(), nl=False)


@main.command()
def migrate() -> None:
    """Create or upgrade the outbox schema in the configured database, then exit. A
    database that is not up yet is waited for, as `relay serve` does."""
    settings = load_settings(forwarding=False)
    with outbox(settings, patience=startup_patience(settings.database_url)) as backend:
        version = backend.migrate()
    click.echo(f"outbox schema at version {version}")


def display_url(url: str) -> str:
    """A database URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@main.command()
@click.option("--upstream", is_flag=True,
              help="Also prove the Roark key and base URL with a read that changes nothing, "
                   "and that every destination answers.")
def check(upstream: bool) -> None:
    """Validate the configuration and the database (creating or upgrading its schema, as
    the relay would on start); with --upstream, prove that the Roark key and base URL
    work and that each destination is reachable. Exits 0 when all is well, 1 when a
    check failed, 2 on a configuration error."""
    settings = load_settings()
    failed = False
    click.echo(f"configuration: ok (Roark at {settings.roark_base_url})")
    for provider, warnings in settings.provider_warnings().items():
        for warning in warnings:
            click.echo(f"{provider}: WARNING {warning}")
        if provider not in settings.insecure_skip_verification and \
                PROVIDERS[provider].configured(settings.providers[provider]):
            click.echo(f"{provider}: signature verification configured")
    if settings.admin_token is None:
        click.echo("status page, admin API and /metrics: disabled (set RELAY_ADMIN_TOKEN to enable)")
    backend = open_backend(settings.database_url, pool_size=settings.database_pool_size)
    try:
        version = backend.migrate()
        click.echo(f"database: ok ({display_url(settings.database_url)}, schema version {version})")
    except StoreUnavailable as error:
        failed = True
        click.echo(f"database: FAILED ({display_url(settings.database_url)}): {error}. "
                   "Check RELAY_DATABASE_URL (or DATABASE_URL) and that the database is up.")
    finally:
        backend.close()
    for destination in settings.destinations:
        click.echo(f"destination {destination.name}: {destination.shown_url} "
                   f"({', '.join(sorted(destination.events | {p + ':*' for p in destination.all_events_of}))})")
    if upstream:
        failed |= not checks.roark(settings, click.echo)
        failed |= not checks.destinations(settings, click.echo)
    sys.exit(1 if failed else 0)


@main.group()
def deliveries() -> None:
    """Inspect the outbox: what was received and whether it reached Roark."""


@deliveries.command("list")
@click.option("--state", type=click.Choice([s.value for s in State]), multiple=True,
              help="Only deliveries in this state (repeatable).")
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
    where = DeliveryFilter(tuple(State(s) for s in state), provider, destination, call_id)
    with outbox(load_settings(forwarding=False)) as backend:
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
        line = (f"{row.id:>7}  {row.provider:8}  {row.destination:12}  {row.state.value:10}  {iso(row.received_at):20}  "
                f"{row.attempts:>5}  {row.last_status or '-':>4}  {row.call_id or '-'}")
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
    with outbox(settings) as backend:
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


@main.command()
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
    with outbox(load_settings(forwarding=False)) as backend:
        replayed = backend.replay(list(delivery_ids) if delivery_ids else None, where, time.time())
        skipped = sorted(set(delivery_ids) - set(replayed))
        unknown = [delivery_id for delivery_id in skipped if backend.get(delivery_id) is None]
    click.echo(f"replayed {len(replayed)} deliver{'y' if len(replayed) == 1 else 'ies'}"
               + (f": {', '.join(map(str, replayed))}" if replayed else ""))
    left = [delivery_id for delivery_id in skipped if delivery_id not in unknown]
    if left:
        click.echo(f"not replayed (delivered or being delivered): {', '.join(map(str, left))}")
    if unknown:
        click.echo(f"relay: no delivery {', '.join(map(str, unknown))}", err=True)
        sys.exit(1)


@main.command()
def secret() -> None:
    """Print a fresh Standard Webhooks secret (whsec_...) for a destination's "secret"."""
    click.echo(new_secret())


@main.group()
def destinations() -> None:
    """Roark and your own destinations (RELAY_DESTINATIONS): what each is owed, and
    resuming one that was stopped."""


@destinations.command("list")
def list_destinations() -> None:
    """Each destination, its deliveries by state, and whether it is stopped."""
    settings = load_settings(forwarding=False)
    with outbox(settings) as backend:
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
    with outbox(load_settings(forwarding=False)) as backend:
        resumed = backend.resume_destination(name)
    if not resumed:
        click.echo(f"relay: destination {name} is not stopped", err=True)
        sys.exit(1)
    click.echo(f"resumed {name}")


@main.command()
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

    with outbox(settings) as backend:
        deleted = asyncio.run(prune_in_batches(backend))
    click.echo(f"deleted {deleted} deliveries received before {iso(cutoff)}")


def parse_time(text: str) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) as epoch seconds."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-01-31T09:00Z or 2026-01-31") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


@main.command()
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
    with outbox(settings) as backend:
        succeeded = asyncio.run(reconcile_now(settings, backend, names, window, dry_run,
                                              lambda line, error: click.echo(line, err=error)))
    sys.exit(0 if succeeded else 1)


@main.command("send-sample")
@click.argument("provider", type=click.Choice(PROVIDER_NAMES))
@click.option("--url", help="The relay to send to (default: this machine's, on PORT).")
@click.option("--event", help="Which sample: an event the provider sends (default: the one "
                              "Roark takes). See relay/testing/samples/.")
def send_sample(provider: str, url: str | None, event: str | None) -> None:
    """Send a sample webhook, signed with the configured secrets the way the provider signs
    it, to a relay (local or deployed) and print the answer: proof, end to end, that the
    relay accepts what the provider sends. A new call id each time. Exits 1 unless the
    relay answers 2xx."""
    from relay.testing.webhooks import sample_events, with_call_id

    settings = load_settings(forwarding=False)
    chosen = PROVIDERS[provider]
    event = event or sorted(chosen.roark_events)[0]
    if event not in sample_events(provider):
        raise click.BadParameter(f"no {provider} sample for {event!r}; there are: "
                                 f"{', '.join(sample_events(provider))}", param_hint="--event")
    body = with_call_id(f"{provider}/{event}", f"sample-{uuid.uuid4().hex[:12]}")
    try:
        headers = chosen.sign(settings.providers[provider], body, time.time())
    except ValueError as error:
        click.echo(f"relay: cannot sign a {provider} webhook: {error}; set it as the relay has it", err=True)
        sys.exit(2)
    target = (url or f"http://127.0.0.1:{settings.port}").rstrip("/") + f"/webhooks/{provider}"
    try:
        answer = httpx.post(target, content=body, headers={"content-type": "application/json", **headers},
                            timeout=30)
    except httpx.HTTPError as error:
        click.echo(f"relay: cannot reach {target}: {type(error).__name__}: {error}", err=True)
        sys.exit(1)
    click.echo(f"{event} -> {target}: HTTP {answer.status_code}")
    click.echo(answer.text)
    sys.exit(0 if answer.is_success else 1)


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Port for the relay.")
@click.option("--database", type=click.Path(dir_okay=False), default="relay-demo.db", show_default=True,
              help="SQLite file for the demo's outbox.")
@click.option("--keep", is_flag=True, help="Keep what an earlier demo left in the database (by default "
                                           "each run starts from an empty one).")
def demo(port: int, database: str, keep: bool) -> None:
    """Try the relay with no accounts: a local fake Roark, signed sample webhooks (some
    that fail upstream), and the status page to look at them."""
    from relay.cli.demo import run_demo

    run_demo(port, database, keep)
