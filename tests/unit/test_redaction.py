import json

import pytest

from relay.redaction import MASK, Redactor
from tests.helpers import sample


def test_vapi_sample_twilio_credentials_are_masked_and_nothing_else_changes():
    document = json.loads(sample("vapi/end-of-call-report"))
    masked = Redactor().mask(document)
    phone = masked["message"]["phoneNumber"]
    assert phone["twilioAuthToken"] == MASK
    assert "REDACT-ME" not in json.dumps(masked)
    assert phone["number"] == document["message"]["phoneNumber"]["number"]
    assert masked["message"]["costs"] == document["message"]["costs"]  # promptTokens are counts
    assert document["message"]["phoneNumber"]["twilioAuthToken"] != MASK  # input untouched


@pytest.mark.parametrize("key", ["twilioApiSecret", "client_secret", "apiKey", "X-Api-Key", "password",
                                 "accessToken", "Authorization", "stripeSecretKey", "privateKey"])
def test_credential_like_keys_are_masked(key):
    assert Redactor().mask({"a": [{key: "value"}]}) == {"a": [{key: MASK}]}


@pytest.mark.parametrize("key", ["promptTokens", "number", "callId", "transcript", "summary"])
def test_ordinary_keys_are_kept(key):
    assert Redactor().mask({key: "value"}) == {key: "value"}


def test_operator_keys_and_strip():
    redactor = Redactor(["customerPin"])
    document = {"customerPin": "1234", "nested": {"twilioAuthToken": "t", "keep": 1}}
    assert redactor.mask(document) == {"customerPin": MASK, "nested": {"twilioAuthToken": MASK, "keep": 1}}
    assert redactor.strip(document) == {"nested": {"keep": 1}}


@pytest.mark.parametrize("value", [["x"], {"value": "x"}, [{"value": "x"}], 1234, True])
@pytest.mark.parametrize("key", ["password", "apiKey", "credentials"])
def test_a_secret_key_masks_its_whole_value_whatever_its_type(key, value):
    assert Redactor().mask({"a": {key: value}}) == {"a": {key: MASK}}


@pytest.mark.parametrize("key", ["token", "apiToken", "x-api-token", "SESSION_TOKEN"])
def test_keys_naming_a_token_are_masked(key):
    assert Redactor().mask({key: "value", "n": {key: 42}}) == {key: MASK, "n": {key: MASK}}


@pytest.mark.parametrize("key", ["promptTokens", "completionTokens", "totalTokens", "prompt_tokens"])
def test_token_counts_are_kept(key):
    assert Redactor().mask({"costs": [{key: 2104}]}) == {"costs": [{key: 2104}]}


def test_strip_removes_known_credential_fields_and_operator_keys_whole():
    redactor = Redactor(["customerPin"])
    document = {"phoneNumber": {"twilioAuthToken": "t", "twilioApiSecret": {"v": "s"}, "number": "+1"},
                "customerPin": [1, 2], "credentials": [{"value": "x"}],
                "llm_token_usage": {"values": [1, 2]}, "status": "ended"}
    assert redactor.strip(document) == {"phoneNumber": {"number": "+1"},
                                        "llm_token_usage": {"values": [1, 2]}, "status": "ended"}


def test_strip_copes_with_any_nesting_and_mask_shows_absurd_nesting_as_mask():
    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit; the JSON parser allows it
        deep = [deep]
    document = {"twilioAuthToken": "t", "analysis": deep}
    stripped = Redactor().strip(document)
    assert list(stripped) == ["analysis"] and stripped["analysis"] is not deep
    assert Redactor().mask(document) == MASK
