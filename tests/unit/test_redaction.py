import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.redaction import MASK, Redactor
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
                                 "accessToken", "Authorization", "stripeSecretKey", "privateKey", "cookie",
                                 "Set-Cookie", "pass", "dbPass", "passcode", "pwd", "userPwd", "sessionId",
                                 "session_id", "SESSIONID"])
def test_credential_like_keys_are_masked(key):
    assert Redactor().mask({"a": [{key: "value"}]}) == {"a": [{key: MASK}]}


@pytest.mark.parametrize("key", ["promptTokens", "number", "callId", "transcript", "summary", "passenger",
                                 "session", "sessionStart"])
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


KEYS = ["twilioAuthToken", "TWILIOAUTHTOKEN", "apiKey", "api_key", "secret", "Secret", "password",
        "credentials", "authorization", "customerPin", "secretary", "mySecretThing", "number", "name",
        'say "secret"', "back\\slash secret"]
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
keys = st.sampled_from(KEYS) | st.text(max_size=6)
documents = st.dictionaries(keys, st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=30),
    max_size=5)


def _written(value, draw) -> str:
    """`value` as JSON text with white space of every kind, and keys whose characters
    are sometimes written as \\u escapes."""
    space = draw(st.sampled_from(["", " ", "\n  ", "\t", " \r\n"]))
    if isinstance(value, dict):
        members = []
        for key, item in value.items():
            escaped = draw(st.booleans())
            text = "".join(f"\\u{ord(c):04x}" if escaped and c.isalpha() else json.dumps(c)[1:-1] for c in key)
            members.append(f'{space}"{text}"{space}:{space}{_written(item, draw)}')
        return "{" + ",".join(members) + space + "}"
    if isinstance(value, list):
        return "[" + ",".join(space + _written(item, draw) for item in value) + space + "]"
    return json.dumps(value)


@settings(max_examples=200, database=None)
@given(documents, st.data())
def test_stripped_text_is_the_stripped_document(document, data):
    redactor = Redactor(["customerPin"])
    text = _written(document, data.draw).encode()
    stripped = bytes(redactor.strip_json(text))
    assert json.loads(stripped) == redactor.strip(json.loads(text))


def test_stripping_text_cuts_members_and_their_commas_only():
    redactor = Redactor()
    text = b'{ "apiKey" : {"a": "x\\"}]{[", "b": [1, {"c": "]"}]}, "secret":2 ,"keep": [1.50, 1e400], "password": null}'
    assert bytes(redactor.strip_json(text)) == b'{  "keep": [1.50, 1e400]}'
    nested = b'[{"x": {"secret": "s"}, "password": "p"}, "secret"]'
    assert bytes(redactor.strip_json(nested)) == b'[{"x": {}}, "secret"]'
