"""The webhook a reconciled call is stored as: rebuilt from what the provider's API
returns, deduplicated against the webhook that did come, and valid for Roark."""

import json

import pytest

from relay import jsonbody
from relay.providers import PROVIDERS
from relay.providers.retell_calls import call_ended
from relay.providers.retell_calls import listed_call as retell_listed
from relay.providers.vapi_calls import REPORT_FIELDS, end_of_call_report, recording_urls
from relay.providers.vapi_calls import listed_call as vapi_listed
from relay.testing.fake_providers import retell_call, vapi_call
from relay.testing.fake_roark import validator_for
from relay.testing.webhooks import sample
from relay.upstream import roark_body

ENDED = 1_747_667_642.5  # the sample report's endedAt
REPORT = json.loads(sample("vapi/end-of-call-report"))["message"]


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
    artifact = {"recordingUrl": "old-mono", "stereoRecordingUrl": "old-stereo",
                "recording": {"stereoUrl": "new-stereo", "mono": {"combinedUrl": "new-mono"}}}
    assert recording_urls(artifact) | {"recording": None} == {
        "recordingUrl": "new-mono", "stereoRecordingUrl": "new-stereo", "recording": None}
    assert recording_urls({"recordingUrl": "old-mono"}) == {"recordingUrl": "old-mono"}
    assert recording_urls({"recording": {"mono": {}}}) == {"recording": {"mono": {}}}


def test_a_call_with_only_ids_sends_no_parties_and_no_timestamp_without_an_end():
    report = end_of_call_report({"id": "c", "status": "in-progress", "assistantId": "a-1"})
    assert report == {"type": "end-of-call-report", "call": {"id": "c", "status": "in-progress",
                                                             "assistantId": "a-1"}}


def test_only_ended_vapi_calls_with_an_id_are_reconciled():
    assert vapi_listed(vapi_call("c1", ENDED)).ended
    assert not vapi_listed(vapi_call("c2", ENDED, status="in-progress")).ended
    assert vapi_listed({"status": "ended"}) is None and vapi_listed("not a call") is None


def test_a_retell_call_becomes_its_call_ended_webhook():
    whole = json.loads(sample("retell/call_analyzed"))["call"]
    assert json.loads(call_ended(whole)) == json.loads(sample("retell/call_ended"))


@pytest.mark.parametrize("status, ended", [("ended", True), ("not_connected", True), ("ongoing", False),
                                           ("error", False)])
def test_retell_calls_that_send_call_ended_are_reconciled(status, ended):
    call = retell_call("c1", ENDED, status=status)
    if status == "not_connected":
        call["end_timestamp"] = round(ENDED * 1000)
    listed = retell_listed(call)
    assert listed.ended is ended and not listed.whole


@pytest.mark.parametrize("provider, real, rebuilt", [
    ("vapi", sample("vapi/end-of-call-report"), vapi_listed(call_from_report(REPORT)).body),
    ("retell", sample("retell/call_ended"), call_ended(json.loads(sample("retell/call_analyzed"))["call"])),
])
def test_a_rebuilt_webhook_dedupes_with_the_one_that_came(provider, real, rebuilt):
    came, found = PROVIDERS[provider].envelope(real), PROVIDERS[provider].envelope(rebuilt)
    assert found.dedupe_key == came.dedupe_key and found.event == came.event and found.call_id == came.call_id


@pytest.mark.parametrize("provider, body, schema", [
    ("vapi", vapi_listed(vapi_call("call-1", ENDED)).body, "VapiCallUploadRequest"),
    ("retell", call_ended(retell_call("call-2", ENDED)), "RetellCallUploadRequest"),
])
def test_what_roark_gets_for_a_reconciled_call_is_valid_per_its_spec(provider, body, schema):
    request = jsonbody.loads(roark_body(PROVIDERS[provider], body, {}))
    assert list(validator_for(schema).iter_errors(request)) == []
    payload = request[PROVIDERS[provider].roark.payload_field]
    assert payload.get("type", payload.get("event")) in ("end-of-call-report", "call_ended")
