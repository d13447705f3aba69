"""Roark's verdicts by hand: `results list` (newest first, --failing for the calls whose
evaluation failed) and `results show ID` (one delivery's verdicts, Roark's data masked)."""

from __future__ import annotations

import json
import sys
import time

import click

from relay.admin.views import result_json
from relay.cli.common import load_settings, opened_outbox, parse_duration
from relay.core.redaction import Redactor


@click.group()
def results() -> None:
    """Roark's verdicts (RELAY_RESULTS): evaluations and sentiment of the calls delivered to it."""


@results.command("list")
@click.option("--failing", is_flag=True, help="Only calls whose evaluation Roark classified as a failure.")
@click.option("--since", "since", help="Only verdicts completed within this long: 90m, 24h, 7d.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Most verdicts to print (a call has one per kind).")
@click.option("--json", "as_json", is_flag=True, help="Print the admin API's JSON instead.")
def list_results(failing: bool, since: str | None, limit: int, as_json: bool) -> None:
    """Verdicts, newest delivery first: kind, state, score and classification."""
    settings = load_settings(forwarding=False)
    cutoff = None if since is None else time.time() - parse_duration(since)
    with opened_outbox(settings, existing=True) as backend:
        found = backend.list_results("evaluation" if failing else None, "failure" if failing else None, cutoff,
                                     None, limit)
    shown = [result_json(r) for r in found]
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    if not shown:
        click.echo("no verdicts" + ("" if settings.results else " (RELAY_RESULTS is empty: fetching is off)"))
    for r in shown:
        score = "" if r["score"] is None else f"{r['score']:.2f}"
        click.echo(f"{r['delivery_id']:>7}  {r['kind']:10} {r['state']:9} {score:>5} {r['classification'] or '':10} "
                   f"{r['provider'] or ''}:{r['call_id'] or ''}")


@results.command("show")
@click.argument("delivery_id", type=int)
def show_result(delivery_id: int) -> None:
    """One delivery's verdicts, with Roark's data (secrets masked)."""
    settings = load_settings(forwarding=False)
    with opened_outbox(settings, existing=True) as backend:
        found = backend.results_for([delivery_id]).get(delivery_id, {})
    if not found:
        click.echo(f"relay: no verdicts for delivery {delivery_id}", err=True)
        sys.exit(1)
    redactor = Redactor(settings.redact_keys)
    click.echo(json.dumps([result_json(r, redactor) for _, r in sorted(found.items())], indent=2))


COMMANDS = (results,)
