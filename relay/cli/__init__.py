"""The `relay` command: run the server, inspect and repair the outbox, try it out.

One module per group of commands: `running` (serve, forward, migrate, settings),
`check` (check, send-sample), `deliveries` (deliveries, replay, prune), `destinations`
(destinations, secret), `alerts`, `results`, `reconcile`, and `demo`; `common` holds what they share."""

from __future__ import annotations

import click

from relay import __version__
from relay.cli import alerts, check, deliveries, demo, destinations, reconcile, results, running
from relay.settings import DOTENV


@click.group(help=f"""Roark Relay: receive VAPI and Retell webhooks, store them durably, forward them
    to Roark Analytics.

    Configuration comes from environment variables, and from a {DOTENV} file in the
    working directory when there is one (the environment wins). `relay settings`
    prints every variable, with its default and meaning.""")
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """Every command's group; its help is given above, where it can name DOTENV."""


for module in (running, check, deliveries, destinations, alerts, results, reconcile, demo):
    for command in module.COMMANDS:
        main.add_command(command)
