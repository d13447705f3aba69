"""`relay demo`: the whole relay on one machine with no accounts.

A fake Roark runs on loopback; the relay forwards to it. Signed sample webhooks are sent
to the relay, a few of which Roark "rejects" (400) or answers with an outage (503), so
the status page has something to show: delivered calls, failed ones to replay, a
duplicate, an ignored event and a forged request refused.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import time

import click
import httpx

from relay.cli.common import require_free_port
from relay.providers.samples import retell_headers, sample, vapi_headers, with_call_id
from relay.settings import Settings

#: Loopback only: the demo prints its secrets.
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _send_samples(base_url: str, vapi_secret: str, retell_key: str) -> None:
    run = time.strftime("%H%M%S")
    vapi = [with_call_id("vapi/end-of-call-report", f"demo-{run}-vapi-{n}") for n in (1, 2, 3)]
    retell = with_call_id("retell/call_ended", f"demo-{run}-retell-1")
    web = with_call_id("retell/call_ended_web", f"demo-{run}-retell-web")
    ignored = sample("vapi/status-update")
    webhooks = [
        ("VAPI end-of-call-report", "/webhooks/vapi", vapi[0], vapi_headers(vapi_secret)),
        ("VAPI end-of-call-report", "/webhooks/vapi", vapi[1], vapi_headers(vapi_secret)),
        ("VAPI end-of-call-report", "/webhooks/vapi", vapi[2], vapi_headers(vapi_secret)),
        ("Retell call_ended (phone)", "/webhooks/retell", retell, retell_headers(retell, retell_key)),
        ("Retell call_ended (web)", "/webhooks/retell", web, retell_headers(web, retell_key)),
        ("VAPI retry of the first report", "/webhooks/vapi", vapi[0], vapi_headers(vapi_secret)),
        ("VAPI status-update", "/webhooks/vapi", ignored, vapi_headers(vapi_secret)),
        ("forged Retell call_ended", "/webhooks/retell", retell, retell_headers(retell, "wrong-key")),
    ]
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for label, path, body, headers in webhooks:
            response = client.post(path, content=body, headers=headers)
            answer = response.json()
            outcome = answer.get("data", {}).get("status") or answer.get("error_code")
            click.echo(f"  {label:32} -> {response.status_code} {outcome}")


@click.command()
@click.option("--port", type=int, default=8000, show_default=True, help="Port for the relay.")
@click.option("--database", type=click.Path(dir_okay=False), default="relay-demo.db", show_default=True,
              help="SQLite file for the demo's outbox.")
@click.option("--keep", is_flag=True, help="Keep what an earlier demo left in the database (by default "
                                           "each run starts from an empty one).")
def demo(port: int, database: str, keep: bool) -> None:
    """Try the relay with no accounts: a local fake Roark, signed sample webhooks (some
    that fail upstream), and the status page to look at them."""
    # Imported here: the server and the fake Roark (with its schema validator) are the
    # demo's alone, and every other command starts faster without them.
    from relay.http.server import run
    from relay.testing.behaviours import Respond
    from relay.testing.fake_roark import FakeRoark

    require_free_port("relay demo", HOST, port, f"--port, e.g. relay demo --port {port + 1}")
    database = os.path.abspath(database)
    if not keep:  # the samples' call ids are new each run, but old failures would linger
        for leftover in (database, f"{database}-wal", f"{database}-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)

    roark_key = f"rk_demo_{secrets.token_hex(8)}"
    vapi_secret = secrets.token_urlsafe(16)
    retell_key = f"key_demo_{secrets.token_hex(8)}"
    admin_token = secrets.token_urlsafe(24)
    database_url = f"sqlite:///{database}"
    # Roark's verdicts come back 10 s after a call is sent, asked for 5 s after delivery.
    fake = FakeRoark(api_key=roark_key, port=_free_port(), results_delay=RESULTS_DELAY_SECONDS).start()
    # The first two calls forwarded are rejected for good; the third meets an outage first.
    invalid = {"error_type": "validation", "error_code": "invalid_parameter",
               "message": "Invalid VAPI payload (the demo's fake Roark rejects this one)"}
    fake.script(Respond(400, invalid), Respond(400, invalid), Respond(503))
    settings = Settings.from_env({
        "ROARK_API_KEY": roark_key,
        "ROARK_BASE_URL": fake.url,
        "RELAY_DATABASE_URL": database_url,
        "VAPI_SECRET": vapi_secret,
        "RETELL_API_KEY": retell_key,
        "RELAY_RECONCILE_INTERVAL_SECONDS": "0",  # the demo's Retell key is no real account's
        "RELAY_ADMIN_TOKEN": admin_token,
        "RELAY_RETRY_BASE_SECONDS": "2",
        "RELAY_RESULTS": "evaluation,sentiment",
        "RELAY_RESULTS_DELAY_SECONDS": "5",
        # The rejections and the outage the demo stages would each log a warning amid its
        # table; the table and the status page say the same.
        "RELAY_LOG_LEVEL": "error",
        "RELAY_LOG_FORMAT": "console",
    })

    def started(base_url: str) -> None:
        click.echo(f"Roark Relay demo: relay on {base_url}, fake Roark on {fake.url}\n")
        click.echo("Sending signed sample webhooks:")
        _send_samples(base_url, vapi_secret, retell_key)
        click.echo(f"""
Status page:  {base_url}/status
Admin token:  {admin_token}
Admin API:    curl -H 'Authorization: Bearer {admin_token}' '{base_url}/admin/api/deliveries?state=failed'
CLI:          RELAY_DATABASE_URL={shlex.quote(database_url)} relay deliveries list
Verdicts:     Roark's evaluations and sentiment arrive on the page within a minute;
              RELAY_DATABASE_URL={shlex.quote(database_url)} relay results list
Send another: VAPI_SECRET={shlex.quote(vapi_secret)} relay send-sample vapi --url {base_url}
              RETELL_API_KEY={shlex.quote(retell_key)} relay send-sample retell --url {base_url}
              (throwaway secrets, made for this demo run and good for nothing else)
Replay the failed ones from the page (the fake Roark accepts them now). Ctrl-C stops.""")

    try:
        # Inline: these settings are the demo's own, not the environment's, which a
        # forwarding process would read.
        run(settings, host=HOST, port=port, on_started=started, forwarding="inline")
    finally:
        fake.stop()


#: How long the demo's fake Roark keeps a call's verdicts pending.
RESULTS_DELAY_SECONDS = 10.0

COMMANDS = (demo,)
