"""Alerts by hand: `alerts list` (what is open, the last week's, each channel) and
`alerts test` (a `relay.alert.test` to every channel of RELAY_ALERTS, each answer printed)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from relay.admin.operations import ALERT_HISTORY_LIMIT, ALERT_HISTORY_SECONDS
from relay.admin.views import alert_json, channel_json
from relay.alerts.messages import TEST, render, sample_alert
from relay.alerts.sending import ChannelClient, Sent
from relay.cli.common import load_settings, opened_outbox
from relay.settings import Settings


@click.group()
def alerts() -> None:
    """Alerts (RELAY_ALERTS): what is wrong now, what was this week, and whether each
    channel receives them."""


@alerts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the admin API's JSON instead.")
def list_alerts(as_json: bool) -> None:
    """Open alerts, those resolved in the last week (newest first), and each channel."""
    settings = load_settings(forwarding=False)
    now = time.time()
    with opened_outbox(settings, existing=True) as backend:
        muted = backend.muted_subjects(now)
        found = backend.alerts_since(now - ALERT_HISTORY_SECONDS, ALERT_HISTORY_LIMIT)
        health = {h.channel: h for h in backend.alert_channels()}
    shown = [alert_json(a, muted) for a in found]
    channels = [channel_json(c, health.get(c.name)) for c in settings.alerts]
    if as_json:
        click.echo(json.dumps({"alerts": shown, "channels": channels}, indent=2))
        return
    if not shown:
        click.echo("no alerts this week")
    for alert in shown:
        state = "OPEN" if alert["state"] == "open" else f"resolved {alert['resolved_at']}"
        extra = "  acknowledged" if alert["acknowledged_at"] else ""
        click.echo(f"{alert['id']:>5}  {state:32}  {alert['kind']:14} {alert['subject']:12} {alert['summary']}{extra}")
    for channel in channels:
        line = f"channel {channel['name']} ({channel['format']}, {channel['url']}): {channel['state']}"
        if channel["state"] == "failing":
            line += f" since {channel['failing_since']}: {channel['last_error']}"
        click.echo(line)
    if not channels:
        click.echo("no channels: set RELAY_ALERTS to have alerts sent")


@alerts.command("test")
def test_channels() -> None:
    """Send a relay.alert.test to every channel and print each answer; exit 1 if one
    does not take it."""
    settings = load_settings(forwarding=False)
    if not settings.alerts:
        click.echo("relay: no channels to test: RELAY_ALERTS is empty", err=True)
        sys.exit(1)
    answers = asyncio.run(_send_tests(settings))
    for name, sent in answers.items():
        click.echo(f"{name}: {'ok' if sent.ok else 'FAILED'} ({sent.describe()})")
    if not all(sent.ok for sent in answers.values()):
        sys.exit(1)


async def _send_tests(settings: Settings) -> dict[str, Sent]:
    now = time.time()
    alert = sample_alert(now)
    answers = {}
    for channel in settings.alerts:
        client = ChannelClient(channel, settings.alert_timeout_seconds, settings.proxy_for(channel.url))
        try:
            body = render(channel.format, alert, TEST, now, settings.public_url)
            answers[channel.name] = await client.send(f"alert-test-{int(now)}-{channel.name}", body)
        finally:
            await client.aclose()
    return answers


COMMANDS = (alerts,)
