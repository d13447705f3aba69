"""Parsing webhook bodies and building Roark's: the fast JSON path must change nothing.

msgspec parses and encodes on the hot path; the stdlib's strict parser decides whatever
msgspec refuses. These tests pin what a relay owes its users there: a payload reaches
Roark with every value as sent, and what is refused is refused with a reason.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import BadRequest
from relay.providers import RETELL, VAPI, parse_envelope, parse_json_object, upstream_body

# JSON values as the stdlib reads them back (no lone surrogates: they are refused).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


def vapi_report(extra: object) -> bytes:
    return json.dumps({"message": {"type": "end-of-call-report", "call": {"id": "c-1"},
                                   "extra": extra}}, ensure_ascii=False).encode()


@settings(max_examples=200, deadline=None)
@given(extra=values)
def test_a_forwarded_payload_keeps_every_value_as_sent(extra):
    raw = vapi_report(extra)
    forwarded = json.loads(upstream_body(VAPI, raw, {}))
    assert forwarded["vapi_end_of_call_report_payload"] == json.loads(raw)["message"]
    assert forwarded["skip_already_imported"] is True


def test_integers_beyond_64_bits_stay_exact():
    # orjson would have read this as 1.2089258196146292e+24.
    raw = b'{"message": {"type": "end-of-call-report", "cost": 1208925819614629174706176}}'
    assert b'"cost":1208925819614629174706176' in upstream_body(VAPI, raw, {})


def test_a_retell_body_is_forwarded_whole_with_properties():
    raw = b'{"event": "call_ended", "call": {"call_id": "r-1", "agent_id": "\xc3\xa9"}}'
    forwarded = json.loads(upstream_body(RETELL, raw, {"env": "prod"}))
    assert forwarded == {"retell_call_ended_payload": json.loads(raw), "skip_already_imported": True,
                         "properties": {"env": "prod"}}


def test_a_leading_byte_order_mark_is_accepted():
    raw = b"\xef\xbb\xbf" + vapi_report(1)
    assert parse_envelope(VAPI, raw).call_id == "c-1"


@pytest.mark.parametrize("raw, reason", [
    (b'{"a": NaN}', "NaN"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": 1e400}', "out of range"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"a": "\xff"}', "utf-8"),
    (b'{"a": 1} trailing', "Extra data"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_refusals_name_their_reason(raw, reason):
    with pytest.raises(BadRequest) as refused:
        parse_json_object(raw)
    assert refused.value.status_code == 400
    assert reason.lower() in str(refused.value).lower()


def test_a_stored_body_that_cannot_become_roarks_raises_value_error():
    # The forwarder marks such a delivery failed for good (ValueError); anything else
    # would escape its task and leave the row leased, to be claimed again for ever.
    with pytest.raises(ValueError):
        upstream_body(VAPI, b'{"message": {"type": "end-of-call-report", "a": "\\ud800"}}', {})
