"""The webhook a reconciled call is stored as: rebuilt from what the provider's API
returns, field by field as the provider wrote it, deduplicated against the webhook that
did come, and valid for Roark."""

import json

import msgspec
import pytest

from relay.core import jsonbody
from relay.forwarding.roark import roark_body
from relay.providers import PROVIDERS
from relay.providers.base import call_dedupe_key
from relay.providers.calls import Fields
from relay.providers.retell_calls import RetellCalls, call_ended
from relay.providers.retell_calls import listed_call as retell_listed
from relay.providers.samples import sample
from relay.providers.vapi_calls import REPORT_FIELDS, VapiCalls, recording_urls, webhook_body
from relay.providers.vapi_calls import listed_call as vapi_listed
from relay.testing.fake_providers import retell_call, vapi_call
from relay.testing.roark_contract import validator_for

ENDED = 1_747_667_642.5  # the sample report's endedAt
REPORT = json.loads(sample("vapi/end-of-call-report"))["message"]


def raw(document) -> msgspec.Raw:
    """A document as an API's answer holds it."""
    return msgspec.Raw(json.dumps(document).encode())


def fields(document: dict) -> Fields:
    """An object's top level as the relay reads a call: each value as written."""
    return msgspec.json.decode(json.dumps(document).encode(), type=Fields)


def end_of_call_report(call: dict) -> dict:
    """The report rebuilt from `call`, as the webhook stored carries it."""
    return json.loads(webhook_body(fields(call)))["message"]


def call_from_report(report: dict) -> dict:
    """The call object GET /call returns for the sample: what the SDK says the report's
    fields are also found on the call, plus the call's own."""
    call = {**report["call"], "updatedAt": report["endedAt"]}
    for name in (*REPORT_FIELDS, "assistant", "customer", "phoneNumber"):
        if name in report:
            call[name] = report[name]
    return call


def test_a_vapi_call_becomes_the_report_its_webhook_carried():
    rebuilt = end_of_call_report(call_from_report(REPORT))
    assert {k: v for k, v in rebuilt.items() if k not in ("timestamp", "call")} == \
        {k: v for k, v in REPORT.items() if k not in ("timestamp", "call")}
    # What the call lacks: when VAPI sent the report, a few seconds after the end.
    assert rebuilt["timestamp"] == ENDED * 1000 and 0 < REPORT["timestamp"] - rebuilt["timestamp"] < 60_000
    assert rebuilt["call"].items() >= REPORT["call"].items()


def test_the_report_carries_the_call_without_the_reports_own_fields():
    call = vapi_call("call-9", ENDED)
    report = end_of_call_report(call)
    assert report["call"]["id"] == "call-9" and report["call"]["status"] == "ended"
    assert not set(REPORT_FIELDS) & set(report["call"])
    assert report["endedAt"] == call["endedAt"] and report["costs"] == call["costs"]
    assert report["phoneNumber"]["twilioAuthToken"] == REPORT["phoneNumber"]["twilioAuthToken"]


def test_recording_urls_prefer_the_recording_object_over_the_deprecated_ones():
    def urls(artifact: dict) -> dict:
        return json.loads(jsonbody.dumps(recording_urls(fields(artifact))))

    artifact = {"recordingUrl": "old-mono", "stereoRecordingUrl": "old-stereo",
                "recording": {"stereoUrl": "new-stereo", "mono": {"combinedUrl": "new-mono"}}}
    assert urls(artifact) | {"recording": None} == {
        "recordingUrl": "new-mono", "stereoRecordingUrl": "new-stereo", "recording": None}
    assert urls({"recordingUrl": "old-mono"}) == {"recordingUrl": "old-mono"}
    assert urls({"recording": {"mono": {}}}) == {"recording": {"mono": {}}}
    assert urls({"recordingUrl": "old-mono", "recording": "not an object"})["recordingUrl"] == "old-mono"


def test_fields_the_relay_does_not_read_are_stored_as_the_provider_wrote_them():
    listed = (b'{"id": "c", "status": "ended", "cost": 0.1000, "costs": [{"cost": 1e400}], '
              b'"transcript": "caf\\u00e9", "analysis": null}')
    report = webhook_body(msgspec.json.decode(listed, type=Fields))
    assert b'"cost":0.1000' in report and b'"costs":[{"cost": 1e400}]' in report
    assert b'"transcript":"caf\\u00e9"' in report
    message = json.loads(report)["message"]
    assert message["call"]["id"] == "c" and "analysis" not in message and "analysis" not in message["call"]


def test_a_call_with_only_ids_sends_no_parties_and_no_timestamp_without_an_end():
    report = end_of_call_report({"id": "c", "status": "in-progress", "assistantId": "a-1"})
    assert report == {"type": "end-of-call-report", "call": {"id": "c", "status": "in-progress",
                                                             "assistantId": "a-1"}}


def test_only_ended_vapi_calls_with_an_id_are_reconciled():
    assert vapi_listed(raw(vapi_call("c1", ENDED))).ended
    assert not vapi_listed(raw(vapi_call("c2", ENDED, status="in-progress"))).ended
    assert vapi_listed(raw({"status": "ended"})) is None and vapi_listed(raw("not a call")) is None
    assert vapi_listed(raw({"id": 7, "status": "ended"})) is None and vapi_listed(raw({"id": ""})) is None


def test_a_retell_call_becomes_its_call_ended_webhook():
    whole = json.loads(sample("retell/call_analyzed"))["call"]
    assert json.loads(call_ended(fields(whole))) == json.loads(sample("retell/call_ended"))


@pytest.mark.parametrize("status, ended", [("ended", True), ("not_connected", True), ("ongoing", False),
                                           ("error", False)])
def test_retell_calls_that_send_call_ended_are_reconciled(status, ended):
    call = retell_call("c1", ENDED, status=status)
    if status == "not_connected":
        call["end_timestamp"] = round(ENDED * 1000)
    listed = retell_listed(raw(call))
    assert listed.ended is ended
    assert listed.fields is None  # the listing leaves transcripts out: the call is fetched whole


@pytest.mark.parametrize("provider, source, real, rebuilt", [
    ("vapi", VapiCalls, sample("vapi/end-of-call-report"), webhook_body(fields(call_from_report(REPORT)))),
    ("retell", RetellCalls, sample("retell/call_ended"),
     call_ended(fields(json.loads(sample("retell/call_analyzed"))["call"]))),
])
def test_a_rebuilt_webhook_dedupes_with_the_one_that_came(provider, source, real, rebuilt):
    came, found = PROVIDERS[provider].envelope(real), PROVIDERS[provider].envelope(rebuilt)
    assert found.dedupe_key == came.dedupe_key and found.event == came.event and found.call_id == came.call_id
    # and the key a listed call is looked up by, before anything is built, is the same
    assert call_dedupe_key(source.event, came.call_id) == came.dedupe_key


@pytest.mark.parametrize("provider, body, schema", [
    ("vapi", webhook_body(fields(vapi_call("call-1", ENDED))), "VapiCallUploadRequest"),
    ("retell", call_ended(fields(retell_call("call-2", ENDED))), "RetellCallUploadRequest"),
])
def test_what_roark_gets_for_a_reconciled_call_is_valid_per_its_spec(provider, body, schema):
    request = jsonbody.loads(roark_body(PROVIDERS[provider], body, {}))
    assert list(validator_for(schema).iter_errors(request)) == []
    payload = request[PROVIDERS[provider].roark.payload_field]
    assert payload.get("type", payload.get("event")) in ("end-of-call-report", "call_ended")
