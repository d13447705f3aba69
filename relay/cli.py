"""The `relay` command."""

from __future__ import annotations

import sys

import click

from relay import __version__
from relay.errors import ConfigError, StoreUnavailable
from relay.settings import Settings


def load_settings() -> Settings:
    """Settings from the environment, or a one-line error naming the variable."""
    try:
        return Settings.from_env()
    except ConfigError as error:
        click.echo(f"relay: configuration error: {error}", err=True)
        sys.exit(2)


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
    """Run the relay: webhook endpoints, health check and the background forwarder."""
    import uvicorn

    from relay import logs
    from relay.app import create_app

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=settings.log_level,
        log_config=None,  # relay.logs already routed the standard library's logging
        access_log=False,
        # The forwarder gets its own grace period during lifespan shutdown.
        timeout_graceful_shutdown=max(settings.shutdown_grace_seconds, 1.0),
    )


@main.command()
def migrate() -> None:
    """Create or upgrade the outbox schema in the configured database, then exit."""
    from relay.outbox import open_backend

    settings = load_settings()
    backend = open_backend(settings.database_url)
    try:
        version = backend.migrate()
    except StoreUnavailable as error:
        click.echo(f"relay: cannot migrate: {error}", err=True)
        sys.exit(1)
    finally:
        backend.close()
    click.echo(f"outbox schema at version {version}")
