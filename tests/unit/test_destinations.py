"""RELAY_DESTINATIONS: parsing and its refusals, which events go where, and signatures the
official Standard Webhooks library accepts."""

import base64
import json
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.core.errors import ConfigError
from relay.destinations import Destinations, new_secret, owed
from relay.settings import Settings

# Fixed, not new_secret(): they appear in test ids, which both test workers must agree on.
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()


def parse(*entries) -> tuple:
    return Destinations()("RELAY_DESTINATIONS", json.dumps(list(entries)))


def entry(**fields) -> dict:
    return {"name": "crm", "url": "https://app.example.com/hooks", "secret": SECRET, **fields}


def test_a_destination_takes_what_roark_takes_unless_told_otherwise():
    [crm] = parse(entry())
    assert owed([crm], "vapi", "end-of-call-report") == ("roark", "crm")
    assert owed([crm], "retell", "call_ended") == ("roark", "crm")
    assert owed([crm], "retell", "call_analyzed") == ()


def test_events_by_name_and_every_event_of_a_provider():
    [crm, audit] = parse(entry(events=["retell:call_analyzed", "vapi:status-update"]),
                         entry(name="audit", events=["vapi:*"]))
    assert owed([crm, audit], "retell", "call_analyzed") == ("crm",)
    assert owed([crm, audit], "vapi", "status-update") == ("crm", "audit")
    assert owed([crm, audit], "vapi", "end-of-call-report") == ("roark", "audit")
    # vapi:* covers events the relay has never heard of, but never the ones VAPI waits
    # on an answer to: a stored copy cannot answer them.
    assert owed([crm, audit], "vapi", "brand-new-event") == ("audit",)
    assert owed([crm, audit], "vapi", "tool-calls") == ()


@pytest.mark.parametrize("raw, problem", [
    ('{"name": "crm"}', "must be a JSON array"),
    ("[1]", "entry 1: must be a JSON object"),
    (json.dumps([entry(name="Roark")]), "entry 1 (Roark): field name"),
    (json.dumps([entry(name="roark")]), "Roark is built in"),
    (json.dumps([entry(), entry()]), "entry 2 (crm): field name: 'crm' is used twice"),
    (json.dumps([entry(url="ftp://x")]), "entry 1 (crm): field url: must be an http or https URL"),
    (json.dumps([entry(url=3)]), "entry 1 (crm): field url: Expected `str`, got `int`"),
    (json.dumps([entry(secret="hunter2")]), "field secret: must start with whsec_"),
    (json.dumps([entry(secret="whsec_!!!")]), "field secret: is not whsec_ followed by base64"),
    (json.dumps([entry(secret="whsec_" + base64.b64encode(b"x" * 8).decode())]),
     "field secret: must encode 24 to 64 bytes, not 8"),
    (json.dumps([entry(events=["vapi:end-of-call-reprot"])]), "VAPI sends no such event"),
    (json.dumps([entry(events=["zoom:*"])]), "is not provider:event"),
    (json.dumps([entry(events=["vapi:tool-calls"])]), "waits for an answer"),
    (json.dumps([entry(events=[])]), "field events: must name at least one event"),
    (json.dumps([entry(colour="red")]), "entry 1 (crm): Object contains unknown field `colour`"),
    (json.dumps([{"url": "https://x"}]), "entry 1: Object missing required field `name`"),
])
def test_invalid_configuration_names_the_entry_and_field(raw, problem):
    with pytest.raises(ConfigError) as caught:
        Destinations()("RELAY_DESTINATIONS", raw)
    assert str(caught.value).startswith("RELAY_DESTINATIONS: ") and problem in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_lease_outlasts_the_slowest_destination():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ROARK_API_KEY": "rk", "RELAY_LEASE_SECONDS": "20",
                           "ROARK_TIMEOUT_SECONDS": "10",
                           "RELAY_DESTINATIONS": json.dumps([entry(timeout_seconds=25)])})
    assert str(caught.value) == ("RELAY_LEASE_SECONDS: must exceed RELAY_DESTINATIONS (crm's timeout_seconds) "
                                 "(25) or a slow delivery could be claimed twice")
    longest = Settings.from_env({"ROARK_API_KEY": "rk", "ROARK_TIMEOUT_SECONDS": "10",
                                 "RELAY_DESTINATIONS": json.dumps([entry(timeout_seconds=25)])})
    assert longest.lease_seconds == 50


def test_secrets_and_urls_never_show_in_repr():
    settings = Settings.from_env({"ROARK_API_KEY": "rk", "RELAY_DESTINATIONS": json.dumps(
        [entry(url="https://user:pw@app.example.com/hooks?token=t0ps3cret")])})
    shown = repr(settings) + repr(settings.destinations)
    assert SECRET not in shown and "t0ps3cret" not in shown and "pw@" not in shown
    assert settings.destinations[0].shown_url == "https://app.example.com/hooks"


def test_the_standard_webhooks_library_verifies_the_signature_with_either_rotated_secret():
    [crm] = parse(entry(secret=f"{OTHER}, {SECRET}"))
    body = '{"message": {"type": "end-of-call-report", "text": "caf\u00e9"}}'.encode()
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": crm.sign("msg_1", now, body)}
    for secret in (SECRET, OTHER):
        assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)


def test_relay_secret_makes_a_valid_secret_each_time():
    first, second = new_secret(), new_secret()
    assert first != second and len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    parse(entry(secret=first))
