"""What each provider module says about its webhooks, and the one JSON policy.

These pin what a relay owes its users: a payload reaches Roark with every value as sent,
what is refused is refused with a reason, and a provider retrying a once-per-call event
is told apart from a new event.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.errors import BadRequest
from relay.core.jsonbody import parse
from relay.forwarding.roark import roark_body
from relay.providers import PROVIDER_NAMES, PROVIDERS
from relay.providers.retell import RETELL
from relay.providers.vapi import VAPI

# JSON values as the stdlib reads them back (no lone surrogates: they are refused).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


def vapi_report(extra: object, event: str = "end-of-call-report") -> bytes:
    return json.dumps({"message": {"type": event, "call": {"id": "c-1"}, "extra": extra}},
                      ensure_ascii=False).encode()


def test_every_provider_is_registered_under_its_own_name():
    assert PROVIDER_NAMES == ("vapi", "retell")
    for name, provider in PROVIDERS.items():
        assert provider.name == name
        assert provider.roark_events <= provider.events
        assert provider.once_per_call <= provider.events
        assert provider.roark.path.startswith("/v1/")


@settings(max_examples=200, deadline=None)
@given(extra=values)
def test_a_forwarded_payload_keeps_every_value_as_sent(extra):
    raw = vapi_report(extra)
    forwarded = json.loads(roark_body(VAPI, raw, {}))
    assert forwarded["vapi_end_of_call_report_payload"] == json.loads(raw)["message"]
    assert forwarded["skip_already_imported"] is True


def test_the_payload_reaches_roark_byte_for_byte():
    # Not decoded and encoded again: big integers, 1e400, key order and spacing all stay.
    message = b'{"type": "end-of-call-report",  "cost": 1208925819614629174706176, "x": 1e400}'
    assert roark_body(VAPI, b'{"message": ' + message + b"}", {}) == (
        b'{"vapi_end_of_call_report_payload":' + message + b',"skip_already_imported":true}')
    envelope = b'{"event": "call_ended", "call": {"call_id": "r-1"}}'
    assert roark_body(RETELL, b"\xef\xbb\xbf" + envelope, {}).startswith(
        b'{"retell_call_ended_payload":' + envelope + b",")


def test_a_retell_body_is_forwarded_whole_with_properties():
    raw = b'{"event": "call_ended", "call": {"call_id": "r-1", "agent_id": "\xc3\xa9"}}'
    forwarded = json.loads(roark_body(RETELL, raw, {"env": "prod"}))
    assert forwarded == {"retell_call_ended_payload": json.loads(raw), "skip_already_imported": True,
                         "properties": {"env": "prod"}}


def test_camel_case_uses_the_older_sdk_field_names():
    forwarded = json.loads(roark_body(VAPI, vapi_report(1), {}, field_case="camel"))
    assert set(forwarded) == {"vapiEndOfCallReportPayload", "skipAlreadyImported"}


def test_a_leading_byte_order_mark_is_accepted():
    raw = b"\xef\xbb\xbf" + vapi_report(1)
    assert VAPI.envelope(raw).call_id == "c-1"
    assert json.loads(roark_body(VAPI, raw, {}))["vapi_end_of_call_report_payload"]["extra"] == 1


@pytest.mark.parametrize("raw, reason", [
    (b'{"a": NaN}', "malformed"),
    (b'{"a": Infinity}', "malformed"),
    (b'{"a": 1e400}', "out of range"),
    (b'{"a": "\\udc00"}', "surrogate"),
    (b'{"a": "\xff"}', "utf-8"),
    (b'{"a": "\x01"}', "malformed"),
    (b'{"a": 1} trailing', "trailing"),
    (b'{"a": 1', "truncated"),
    (b"{\"a\": " + b"[" * 100_000, "nested too deeply"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_refusals_name_their_reason(raw, reason):
    with pytest.raises(BadRequest) as refused:
        parse(raw)
    assert refused.value.status_code == 400
    assert reason.lower() in str(refused.value).lower()


def test_an_unpaired_surrogate_escape_is_refused_wherever_it_stands():
    for raw in (b'{"a": "\\ud800"}', b'{"a": "\\ud800x"}', b'{"a": "\\ud800\\u0041"}'):
        with pytest.raises(BadRequest):
            parse(raw)


def test_a_stored_body_that_cannot_become_roarks_raises_value_error():
    # The forwarder marks such a delivery failed for good (ValueError); anything else
    # would escape its task and leave the row leased, to be claimed again for ever.
    with pytest.raises(ValueError):
        roark_body(VAPI, b'{"message": {"type": "end-of-call-report", "a": "\\ud800"}}', {})


def test_once_per_call_events_dedupe_by_call_id():
    first = VAPI.envelope(vapi_report(1))
    resent = VAPI.envelope(vapi_report(2))
    assert first.dedupe_key == resent.dedupe_key == "end-of-call-report:id:str:c-1"
    ended = b'{"event": "call_ended", "call": {"call_id": 7}}'
    assert RETELL.envelope(ended).dedupe_key == "call_ended:id:int:7"


def test_an_integer_call_id_and_the_same_digits_as_text_are_told_apart():
    as_int = RETELL.envelope(b'{"event": "call_ended", "call": {"call_id": 123}}')
    as_text = RETELL.envelope(b'{"event": "call_ended", "call": {"call_id": "123"}}')
    assert as_int.call_id == as_text.call_id == "123"
    assert as_int.dedupe_key != as_text.dedupe_key


def test_a_call_id_cannot_pose_as_a_content_hash():
    hashed = RETELL.envelope(b'{"event": "call_ended"}')
    digest = hashed.dedupe_key.rpartition(":")[2]
    posing = RETELL.envelope(json.dumps({"event": "call_ended", "call": {"call_id": f"sha256:{digest}"}}).encode())
    assert posing.call_id == f"sha256:{digest}"
    assert posing.dedupe_key != hashed.dedupe_key


def test_events_that_repeat_within_a_call_dedupe_by_content():
    one = VAPI.envelope(vapi_report({"status": "ringing"}, "status-update"))
    two = VAPI.envelope(vapi_report({"status": "in-progress"}, "status-update"))
    again = VAPI.envelope(vapi_report({"status": "ringing"}, "status-update"))
    assert one.dedupe_key != two.dedupe_key
    assert one.dedupe_key == again.dedupe_key
    assert one.dedupe_key.startswith("status-update:sha256:")


@pytest.mark.parametrize("provider, raw, parameter", [
    (VAPI, b'{"type": "end-of-call-report"}', "message"),
    (VAPI, b'{"message": {"type": ""}}', "message.type"),
    (RETELL, b'{"call": {"call_id": "x"}}', "event"),
    (RETELL, b'{"event": "call\\u0000ended"}', "event"),
])
def test_a_body_that_is_not_the_providers_webhook_is_refused(provider, raw, parameter):
    with pytest.raises(BadRequest) as refused:
        provider.envelope(raw)
    assert refused.value.parameter == parameter


@pytest.mark.parametrize("call_id, kept", [
    ("abc", "abc"), (12345, "12345"), (True, None), ("", None), ("a\u0000b", None), ("x" * 257, None),
])
def test_only_plain_short_ids_are_call_ids(call_id, kept):
    raw = json.dumps({"event": "call_ended", "call": {"call_id": call_id}}).encode()
    envelope = RETELL.envelope(raw)
    assert envelope.call_id == kept
    assert envelope.dedupe_key.startswith("call_ended:sha256:" if kept is None else "call_ended:id:")


def test_stripping_keeps_every_number_and_finds_escaped_keys():
    from relay.core.redaction import Redactor

    strip = Redactor()
    message = (b'{"type": "end-of-call-report", "phoneNumber": {"\\u0074wilioAuthToken": "tw-secret"},'
               b' "cost": 0.1, "huge": 1e400, "big": 1208925819614629174706176}')
    forwarded = roark_body(VAPI, b'{"message": ' + message + b"}", {}, strip_secrets=strip)
    assert b"tw-secret" not in forwarded
    assert b'"phoneNumber": {}' in forwarded
    assert b'"cost": 0.1' in forwarded and b'"huge": 1e400' in forwarded
    assert b'"big": 1208925819614629174706176' in forwarded


def test_a_payload_with_nothing_to_strip_is_not_decoded_again():
    from relay.core.redaction import Redactor

    message = b'{"type": "end-of-call-report",  "x": [1, 2.50]}'
    assert roark_body(VAPI, b'{"message": ' + message + b"}", {}, strip_secrets=Redactor()) == (
        b'{"vapi_end_of_call_report_payload":' + message + b',"skip_already_imported":true}')
