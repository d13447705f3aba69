import hashlib
import hmac
import json
import re

import pytest
from starlette.datastructures import Headers

from relay.core.errors import Unauthorized
from relay.providers import retell

KEY = "key_retell_live_6f1c0a9e"
OLD_KEY = "key_retell_old_2b7d4e11"
NOW = 1_700_000_000.0
TS = 1_700_000_000_000
BODY = json.dumps({"event": "call_ended", "call": {"call_id": "c1"}}).encode()
UNICODE_BODY = json.dumps(
    {"event": "call_ended", "call": {"call_id": "c1", "transcript": "Zoë 日本語"}},
    ensure_ascii=False,
).encode("utf-8")


def retell_headers(value: str) -> Headers:
    # Encoded and decoded the way a server does: bytes on the wire, latin-1 in Starlette.
    return Headers(raw=[(b"x-retell-signature", value.encode("utf-8"))])


def rejected(keys, body, headers, code, now=NOW, **kwargs) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        retell.verify_signature(keys, body, headers, now, **kwargs)
    error = info.value
    assert error.error_code == code
    assert error.status_code == 401
    digests = re.findall(r"[0-9a-fA-F]{32,}", headers.get("x-retell-signature", ""))
    for secret in [KEY, OLD_KEY, *filter(None, keys), *digests]:
        assert secret not in error.message
    return error


def test_worked_example_from_providers_md_is_accepted():
    raw_text = UNICODE_BODY.decode("utf-8")
    d = hmac.new(KEY.encode(), (raw_text + str(TS)).encode(), hashlib.sha256).hexdigest()

    assert retell.sign(KEY, UNICODE_BODY, TS) == f"v={TS},d={d}"
    headers = Headers(headers={"x-retell-signature": f"v={TS},d={d}"})
    retell.verify_signature([KEY], UNICODE_BODY, headers, NOW)


@pytest.mark.parametrize("body", [BODY, UNICODE_BODY, b""], ids=["ascii", "unicode", "empty"])
def test_good_signature_is_accepted(body):
    headers = Headers(headers={"X-Retell-Signature": retell.sign(KEY, body, TS)})
    retell.verify_signature([KEY], body, headers, NOW)


def test_reserialised_unicode_body_does_not_verify():
    signature = retell.sign(KEY, UNICODE_BODY, TS)
    reserialised = json.dumps(json.loads(UNICODE_BODY), ensure_ascii=True).encode()

    rejected([KEY], reserialised, retell_headers(signature), "invalid_signature")


@pytest.mark.parametrize(
    ("keys", "body"),
    [
        ([KEY], BODY.replace(b"c1", b"c2")),
        ([OLD_KEY], BODY),
        (["wrong"], BODY),
    ],
    ids=["tampered-body", "wrong-key", "short-wrong-key"],
)
def test_bad_signature_is_rejected(keys, body):
    rejected(keys, body, retell_headers(retell.sign(KEY, BODY, TS)), "invalid_signature")


@pytest.mark.parametrize("signing_key", [OLD_KEY, KEY])
def test_any_configured_key_is_accepted(signing_key):
    retell.verify_signature([OLD_KEY, KEY], BODY, retell_headers(retell.sign(signing_key, BODY, TS)), NOW)


@pytest.mark.parametrize("offset_ms", [-300_000, 300_000, 0, -1, 1])
def test_timestamp_inside_window_is_accepted(offset_ms):
    signature = retell.sign(KEY, BODY, TS + offset_ms)
    retell.verify_signature([KEY], BODY, retell_headers(signature), NOW)


@pytest.mark.parametrize("offset_ms", [-300_001, 300_001, -TS + 1, 10**19])
def test_timestamp_outside_window_is_rejected(offset_ms):
    signature = retell.sign(KEY, BODY, TS + offset_ms)
    error = rejected([KEY], BODY, retell_headers(signature), "stale_timestamp")
    assert error.message == "signature timestamp is outside the 300 s window"


def test_tolerance_is_configurable():
    signature = retell.sign(KEY, BODY, TS - 10_001)
    retell.verify_signature([KEY], BODY, retell_headers(signature), NOW, tolerance=20)
    rejected([KEY], BODY, retell_headers(signature), "stale_timestamp", tolerance=10)


DIGEST = retell.digest(KEY, BODY, TS)


@pytest.mark.parametrize(
    "value",
    [
        "",
        DIGEST,
        f"v={TS}",
        f"v={TS},d={DIGEST.upper()}",
        f"v={TS},d={DIGEST[:-1]}",
        f"v={TS},d={DIGEST}0",
        f"v={TS},d={DIGEST},x=1",
        f"v={TS},d={DIGEST},d={DIGEST}",
        f"d={DIGEST},v={TS}",
        f"v={TS}, d={DIGEST}",
        f" v={TS},d={DIGEST}",
        f"v={TS},d={DIGEST}\n",
        f"v=abc,d={DIGEST}",
        f"v=,d={DIGEST}",
        f"v=-{TS},d={DIGEST}",
        f"v={TS}.5,d={DIGEST}",
        f"v=0{TS},d={DIGEST}",
        f"v={'9' * 5000},d={DIGEST}",
        f"v=١٧٠٠٠٠٠٠٠٠٠٠٠,d={DIGEST}",
        f"v={TS},d={DIGEST[:-1]}é",
    ],
)
def test_malformed_header_is_rejected(value):
    rejected([KEY], BODY, retell_headers(value), "malformed_signature")


def test_missing_header_is_rejected():
    error = rejected([KEY], BODY, Headers(headers={"x-signature": "v=1,d=2"}), "missing_signature")
    assert error.message == "x-retell-signature header is missing"


def test_headers_alone_refuse_before_any_body_is_read():
    for headers, code in [(Headers(headers={}), "missing_signature"),
                          (retell_headers("v=1,d=zz"), "malformed_signature"),
                          (retell_headers(retell.sign(KEY, BODY, TS - 600_000)), "stale_timestamp")]:
        with pytest.raises(Unauthorized) as info:
            retell.check_signature_headers([KEY], headers, NOW)
        assert info.value.error_code == code


def test_the_body_can_arrive_in_chunks():
    check = retell.check_signature_headers([OLD_KEY, KEY], retell_headers(retell.sign(KEY, UNICODE_BODY, TS)), NOW)
    for start in range(0, len(UNICODE_BODY), 7):  # splits multi-byte characters too
        check.update(UNICODE_BODY[start:start + 7])
    check.verify()
    forged = retell.check_signature_headers([KEY], retell_headers(retell.sign(KEY, BODY, TS)), NOW)
    forged.update(BODY + b" ")
    with pytest.raises(Unauthorized):
        forged.verify()


@pytest.mark.parametrize("keys", [[], [""]], ids=["no-keys", "empty-key"])
def test_no_configured_key_is_rejected(keys):
    headers = retell_headers(retell.sign("", BODY, TS))
    rejected(keys, BODY, headers, "provider_not_configured")


def test_single_string_instead_of_key_list_is_a_programming_error():
    with pytest.raises(TypeError):
        retell.verify_signature(KEY, BODY, retell_headers(retell.sign(KEY, BODY, TS)), NOW)
