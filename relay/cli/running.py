"""Running the relay: `serve`, `forward` (the forwarding process alone), `migrate` and
`settings` (every variable, as an environment file)."""

from __future__ import annotations

from pathlib import Path

import click

from relay.cli.common import load_settings, opened_outbox, require_free_port
from relay.outbox.startup import startup_patience


@click.command()
@click.option("--host", default=None, help="Interface to bind (default RELAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the relay: webhook endpoints, health check and status page, with a forwarding
    process beside it (RELAY_FORWARD: process, inline or off)."""
    from relay.http.server import run

    settings = load_settings()
    host = host or settings.host
    port = settings.port if port is None else port
    require_free_port("relay serve", host, port, f"PORT={port + 1} or --port {port + 1}")
    # The outbox is opened (and migrated) here first, so a relay that cannot start says
    # why in one line rather than in uvicorn's traceback of its lifespan.
    with opened_outbox(settings, patience=startup_patience(settings.database_url)):
        pass
    run(settings, host=host, port=port)


@click.command()
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
    with opened_outbox(settings, patience=startup_patience(settings.database_url)):
        pass
    run_forwarding(settings, metrics_file, parent_pid)


@click.command("settings")
def show_settings() -> None:
    """Print every setting with its default and meaning, as an environment file (this
    is config/relay.env.example)."""
    from relay.settings import example_file

    click.echo(example_file(), nl=False)


@click.command()
def migrate() -> None:
    """Create or upgrade the outbox schema in the configured database, then exit. A
    database that is not up yet is waited for, as `relay serve` does."""
    settings = load_settings(forwarding=False)
    with opened_outbox(settings, patience=startup_patience(settings.database_url)) as backend:
        version = backend.migrate()
    click.echo(f"outbox schema at version {version}")


COMMANDS = (serve, forward, show_settings, migrate)
