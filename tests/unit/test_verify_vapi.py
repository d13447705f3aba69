import base64
import hashlib
import hmac
import json

import pytest
from starlette.datastructures import Headers

from relay.core.errors import Unauthorized
from relay.providers import vapi_credentials

TOKEN = "vapi-token-3f9b27c1"
OLD_TOKEN = "vapi-token-old-88a0d"
SECRET = "vapi-hmac-secret-51e2c7"
OLD_SECRET = "vapi-hmac-secret-old-0d4a"
RAW_KEY = bytes(range(200, 232))  # not UTF-8: only reachable through a base64 secret
NOW = 1_700_000_000.0
TS = "1700000000"
TS_MS = "1700000000000"
BODY = json.dumps({"message": {"type": "end-of-call-report", "call": {"id": "c1"}}}).encode()
UNICODE_BODY = json.dumps(
    {"message": {"type": "end-of-call-report", "summary": "Zoë 日本語"}}, ensure_ascii=False
).encode("utf-8")
SECRETS = [TOKEN, OLD_TOKEN, SECRET, OLD_SECRET, base64.b64encode(RAW_KEY).decode()]


def wire(headers: dict[str, str]) -> Headers:
    # Encoded and decoded the way a server does: bytes on the wire, latin-1 in Starlette.
    return Headers(raw=[(k.lower().encode(), v.encode("utf-8")) for k, v in headers.items()])


def assert_rejected(code, headers, verify, *leading_args) -> Unauthorized:
    """Every verifier ends with (..., headers, now)."""
    with pytest.raises(Unauthorized) as info:
        verify(*leading_args, headers, NOW)
    error = info.value
    assert error.error_code == code
    assert error.status_code == 401
    sent_values = [value for value in headers.values() if len(value) > 12]
    for leak in [*SECRETS, *sent_values]:
        assert leak not in error.message
    return error


def reject_token(scheme, headers, code) -> Unauthorized:
    return assert_rejected(code, wire(headers), vapi_credentials.verify_token, scheme, BODY)


def reject_hmac(scheme, headers, code, body=BODY) -> Unauthorized:
    return assert_rejected(code, wire(headers), vapi_credentials.verify_hmac, scheme, body)


# --- token ----------------------------------------------------------------------------

DEFAULT = vapi_credentials.TokenScheme(tokens=(TOKEN,))
CUSTOM = vapi_credentials.TokenScheme(tokens=(TOKEN,), header="X-Roark-Token")
CUSTOM_PREFIXED = vapi_credentials.TokenScheme(tokens=(TOKEN,), header="X-Roark-Token", prefix="Token ")
AUTHORIZATION = vapi_credentials.TokenScheme(tokens=(TOKEN,), header="authorization")
AUTHORIZATION_RAW = vapi_credentials.TokenScheme(tokens=(TOKEN,), header="Authorization", prefix="")


@pytest.mark.parametrize(
    ("scheme", "headers"),
    [
        (DEFAULT, {"X-Vapi-Secret": TOKEN}),
        (DEFAULT, {"Authorization": f"Bearer {TOKEN}"}),
        (DEFAULT, {"authorization": f"bearer {TOKEN}"}),
        (DEFAULT, {"Authorization": f"BEARER {TOKEN}"}),
        (DEFAULT, {"X-Vapi-Secret": "wrong", "Authorization": f"Bearer {TOKEN}"}),
        (CUSTOM, {"X-Roark-Token": TOKEN}),
        (CUSTOM_PREFIXED, {"x-roark-token": f"token {TOKEN}"}),
        (AUTHORIZATION, {"Authorization": f"Bearer {TOKEN}"}),
        (AUTHORIZATION_RAW, {"Authorization": TOKEN}),
        (vapi_credentials.TokenScheme(tokens=(OLD_TOKEN, TOKEN)), {"X-Vapi-Secret": TOKEN}),
    ],
)
def test_token_is_accepted(scheme, headers):
    vapi_credentials.verify_token(scheme, BODY, Headers(headers=headers), NOW)


@pytest.mark.parametrize(
    ("scheme", "headers", "code"),
    [
        (DEFAULT, {}, "missing_signature"),
        (DEFAULT, {"X-Vapi-Secret": OLD_TOKEN}, "invalid_signature"),
        (DEFAULT, {"X-Vapi-Secret": TOKEN[:-1]}, "invalid_signature"),
        (DEFAULT, {"X-Vapi-Secret": f"Bearer {TOKEN}"}, "invalid_signature"),
        (DEFAULT, {"Authorization": f"Bearer {OLD_TOKEN}"}, "invalid_signature"),
        (DEFAULT, {"Authorization": TOKEN}, "malformed_signature"),
        (DEFAULT, {"Authorization": f"Basic {TOKEN}"}, "malformed_signature"),
        (DEFAULT, {"Authorization": "Bearer "}, "malformed_signature"),
        (DEFAULT, {"X-Vapi-Secret": ""}, "malformed_signature"),
        (DEFAULT, {"X-Vapi-Secret": f"{TOKEN}é"}, "malformed_signature"),
        (DEFAULT, {"X-Vapi-Secret": OLD_TOKEN, "Authorization": "Basic x"}, "invalid_signature"),
        (DEFAULT, {"X-Vapi-Secret": "", "Authorization": f"Bearer {OLD_TOKEN}"},
         "invalid_signature"),
        (CUSTOM, {"X-Vapi-Secret": TOKEN}, "missing_signature"),
        (CUSTOM, {"Authorization": f"Bearer {TOKEN}"}, "missing_signature"),
        (CUSTOM, {"X-Roark-Token": f"Bearer {TOKEN}"}, "invalid_signature"),
        (CUSTOM_PREFIXED, {"X-Roark-Token": TOKEN}, "malformed_signature"),
        (AUTHORIZATION, {"X-Vapi-Secret": TOKEN}, "missing_signature"),
        (AUTHORIZATION_RAW, {"Authorization": f"Bearer {TOKEN}"}, "invalid_signature"),
    ],
)
def test_bad_token_is_rejected(scheme, headers, code):
    reject_token(scheme, headers, code)


def test_missing_token_message_names_the_expected_headers():
    assert reject_token(DEFAULT, {}, "missing_signature").message == (
        "X-Vapi-Secret or Authorization header is missing"
    )
    assert reject_token(CUSTOM, {}, "missing_signature").message == (
        "X-Roark-Token header is missing"
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tokens": ()}, ValueError),
        ({"tokens": ("",)}, ValueError),
        ({"tokens": TOKEN}, TypeError),
        ({"tokens": (TOKEN,), "prefix": "Token "}, ValueError),
    ],
)
def test_invalid_token_scheme_is_refused(kwargs, error):
    with pytest.raises(error):
        vapi_credentials.TokenScheme(**kwargs)


# --- HMAC -----------------------------------------------------------------------------

HMAC = vapi_credentials.HmacScheme(secrets=(SECRET,))


def oracle(key: bytes, payload: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, payload, getattr(hashlib, algorithm)).digest()


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "sha1"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_every_algorithm_and_encoding_round_trips(algorithm, encoding):
    scheme = vapi_credentials.HmacScheme(secrets=(SECRET,), algorithm=algorithm, encoding=encoding)
    digest = oracle(SECRET.encode(), f"{TS}.".encode() + BODY, algorithm)
    expected = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()

    assert vapi_credentials.hmac_signature(scheme, SECRET, BODY, TS) == expected
    vapi_credentials.verify_hmac(scheme, BODY, Headers(headers=vapi_credentials.sign_hmac(scheme, BODY, TS)), NOW)


def test_default_headers_and_payload_match_an_independent_hmac():
    signature = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    headers = {"X-Signature": signature, "X-Timestamp": TS}

    assert vapi_credentials.sign_hmac(HMAC, BODY, TS) == {"x-signature": signature, "x-timestamp": TS}
    vapi_credentials.verify_hmac(HMAC, BODY, Headers(headers=headers), NOW)
    uppercase = {**headers, "X-Signature": signature.upper()}
    vapi_credentials.verify_hmac(HMAC, BODY, Headers(headers=uppercase), NOW)


@pytest.mark.parametrize("header_prefix", ["sha256=", "SHA256=", ""])
def test_prefix_is_stripped_when_present(header_prefix):
    scheme = vapi_credentials.HmacScheme(secrets=(SECRET,), prefix="sha256=")
    signed = vapi_credentials.sign_hmac(scheme, BODY, TS)
    assert signed["x-signature"].startswith("sha256=")

    signature = vapi_credentials.hmac_signature(scheme, SECRET, BODY, TS)
    headers = {"x-signature": header_prefix + signature, "x-timestamp": TS}
    vapi_credentials.verify_hmac(scheme, BODY, Headers(headers=headers), NOW)


def test_base64_secret_is_decoded_to_the_real_key():
    scheme = vapi_credentials.HmacScheme(
        secrets=(base64.b64encode(RAW_KEY).decode(),), secret_is_base64=True, encoding="base64"
    )
    expected = base64.b64encode(oracle(RAW_KEY, f"{TS}.".encode() + BODY)).decode()

    assert vapi_credentials.sign_hmac(scheme, BODY, TS)["x-signature"] == expected
    vapi_credentials.verify_hmac(scheme, BODY, Headers(headers=vapi_credentials.sign_hmac(scheme, BODY, TS)), NOW)


def test_custom_headers_and_payload_template():
    scheme = vapi_credentials.HmacScheme(
        secrets=(SECRET,),
        signature_header="X-Hook-Sig",
        timestamp_header="X-Hook-Time",
        payload_template="v1:{timestamp}:{body}:{timestamp}",
    )
    expected = oracle(SECRET.encode(), f"v1:{TS}:".encode() + BODY + f":{TS}".encode()).hex()
    headers = {"X-Hook-Sig": expected, "X-Hook-Time": TS}

    vapi_credentials.verify_hmac(scheme, BODY, Headers(headers=headers), NOW)
    reject_hmac(HMAC, headers, "missing_signature")


def test_unicode_body_is_signed_over_raw_bytes():
    vapi_credentials.verify_hmac(HMAC, UNICODE_BODY, wire(vapi_credentials.sign_hmac(HMAC, UNICODE_BODY, TS)), NOW)

    reserialised = json.dumps(json.loads(UNICODE_BODY), ensure_ascii=True).encode()
    reject_hmac(HMAC, vapi_credentials.sign_hmac(HMAC, UNICODE_BODY, TS), "invalid_signature", reserialised)


def test_invalid_utf8_body_is_signed_over_raw_bytes():
    body = b'{"message": "\xff\xfe"}'
    vapi_credentials.verify_hmac(HMAC, body, wire(vapi_credentials.sign_hmac(HMAC, body, TS)), NOW)
    reject_hmac(HMAC, vapi_credentials.sign_hmac(HMAC, body, TS), "invalid_signature", b'{"message": ""}')


@pytest.mark.parametrize(
    ("verifier", "signer", "body"),
    [
        (HMAC, HMAC, BODY.replace(b"c1", b"c2")),
        (HMAC, vapi_credentials.HmacScheme(secrets=(OLD_SECRET,)), BODY),
        (HMAC, vapi_credentials.HmacScheme(secrets=(SECRET,), algorithm="sha512"), BODY),
        (HMAC, vapi_credentials.HmacScheme(secrets=(SECRET,), payload_template="{body}"), BODY),
    ],
    ids=["tampered-body", "wrong-secret", "other-algorithm", "other-template"],
)
def test_bad_signature_is_rejected(verifier, signer, body):
    signed = vapi_credentials.sign_hmac(signer, BODY, TS)
    if verifier.algorithm != signer.algorithm:
        signed["x-signature"] = signed["x-signature"][:64]
    reject_hmac(verifier, signed, "invalid_signature", body)


@pytest.mark.parametrize("signing_secret", [OLD_SECRET, SECRET])
def test_any_configured_secret_is_accepted(signing_secret):
    headers = vapi_credentials.sign_hmac(vapi_credentials.HmacScheme(secrets=(signing_secret,)), BODY, TS)
    vapi_credentials.verify_hmac(vapi_credentials.HmacScheme(secrets=(OLD_SECRET, SECRET)), BODY, wire(headers), NOW)


@pytest.mark.parametrize(
    "timestamp",
    ["1699999700", "1700000300", TS, "1699999700000", "1700000300000", TS_MS, f"00{TS}"],
)
def test_timestamp_inside_window_is_accepted(timestamp):
    vapi_credentials.verify_hmac(HMAC, BODY, wire(vapi_credentials.sign_hmac(HMAC, BODY, timestamp)), NOW)


@pytest.mark.parametrize(
    "timestamp",
    ["1699999699", "1700000301", "1699999699999", "1700000300001", "0", "9" * 20],
)
def test_timestamp_outside_window_is_rejected(timestamp):
    error = reject_hmac(HMAC, vapi_credentials.sign_hmac(HMAC, BODY, timestamp), "stale_timestamp")
    assert error.message == "signature timestamp is outside the 300 s window"


def test_tolerance_is_configurable():
    headers = wire(vapi_credentials.sign_hmac(HMAC, BODY, "1699999980"))
    vapi_credentials.verify_hmac(HMAC, BODY, headers, NOW, tolerance=20)
    with pytest.raises(Unauthorized, match="outside the 10 s window"):
        vapi_credentials.verify_hmac(HMAC, BODY, headers, NOW, tolerance=10)


GOOD_SIGNATURE = vapi_credentials.hmac_signature(HMAC, SECRET, BODY, TS)


@pytest.mark.parametrize(
    ("headers", "missing"),
    [
        ({}, "x-signature"),
        ({"x-timestamp": TS}, "x-signature"),
        ({"x-signature": GOOD_SIGNATURE}, "x-timestamp"),
    ],
)
def test_missing_headers_are_rejected(headers, missing):
    error = reject_hmac(HMAC, headers, "missing_signature")
    assert error.message == f"{missing} header is missing"


BASE64 = vapi_credentials.HmacScheme(secrets=(SECRET,), encoding="base64")


@pytest.mark.parametrize(
    ("scheme", "signature", "timestamp"),
    [
        (HMAC, GOOD_SIGNATURE, ""),
        (HMAC, GOOD_SIGNATURE, "now"),
        (HMAC, GOOD_SIGNATURE, "-5"),
        (HMAC, GOOD_SIGNATURE, f"{TS}.5"),
        (HMAC, GOOD_SIGNATURE, f" {TS}"),
        (HMAC, GOOD_SIGNATURE, "9" * 5000),
        (HMAC, GOOD_SIGNATURE, "١٧٠٠٠٠٠٠٠٠"),
        (HMAC, "", TS),
        (HMAC, GOOD_SIGNATURE[:-1], TS),
        (HMAC, GOOD_SIGNATURE[:-2], TS),
        (HMAC, GOOD_SIGNATURE + "00", TS),
        (HMAC, "zz" * 32, TS),
        (HMAC, GOOD_SIGNATURE[:30] + " " + GOOD_SIGNATURE[30:], TS),
        (HMAC, GOOD_SIGNATURE[:-1] + "é", TS),
        (HMAC, f"sha256={GOOD_SIGNATURE}", TS),
        (BASE64, "!!not base64!!", TS),
        (BASE64, base64.b64encode(b"short").decode(), TS),
        (BASE64, GOOD_SIGNATURE, TS),
    ],
)
def test_malformed_headers_are_rejected(scheme, signature, timestamp):
    headers = {"x-signature": signature, "x-timestamp": timestamp}
    reject_hmac(scheme, headers, "malformed_signature")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secrets": ()},
        {"secrets": ("",)},
        {"secrets": (SECRET,), "algorithm": "md5"},
        {"secrets": (SECRET,), "algorithm": "SHA-256"},
        {"secrets": (SECRET,), "encoding": "base32"},
        {"secrets": (SECRET,), "payload_template": "{timestamp}"},
        {"secrets": ("not base64!",), "secret_is_base64": True},
        {"secrets": ("Zoë",), "secret_is_base64": True},
    ],
)
def test_invalid_hmac_scheme_is_refused(kwargs):
    with pytest.raises(ValueError):
        vapi_credentials.HmacScheme(**kwargs)


def test_repr_never_shows_secrets():
    schemes = vapi_credentials.TokenScheme(tokens=(TOKEN, OLD_TOKEN)), vapi_credentials.HmacScheme(secrets=(SECRET,))
    text = "".join(repr(scheme) + str(scheme) for scheme in schemes)
    for secret in (TOKEN, OLD_TOKEN, SECRET):
        assert secret not in text


# --- verify_credentials ----------------------------------------------------------------------


def test_nothing_configured_is_rejected():
    with pytest.raises(Unauthorized) as info:
        vapi_credentials.verify_credentials(None, None, BODY, Headers(headers={"X-Vapi-Secret": TOKEN}), NOW)
    assert info.value.error_code == "provider_not_configured"
    assert "VAPI_SECRET" in info.value.message
    assert "VAPI_HMAC_SECRET" in info.value.message


SIGNED = vapi_credentials.sign_hmac(HMAC, BODY, TS)


@pytest.mark.parametrize(
    ("token", "hmac_scheme", "headers"),
    [
        (DEFAULT, None, {"X-Vapi-Secret": TOKEN}),
        (None, HMAC, SIGNED),
        (DEFAULT, HMAC, {"X-Vapi-Secret": TOKEN}),
        (DEFAULT, HMAC, SIGNED),
        (DEFAULT, HMAC, {**SIGNED, "Authorization": "Basic unrelated"}),
        (DEFAULT, HMAC, {"Authorization": f"Bearer {TOKEN}", "x-signature": "garbage"}),
    ],
)
def test_any_configured_scheme_may_accept(token, hmac_scheme, headers):
    vapi_credentials.verify_credentials(token, hmac_scheme, BODY, Headers(headers=headers), NOW)


@pytest.mark.parametrize(
    ("token", "hmac_scheme", "headers", "code", "mentions"),
    [
        (DEFAULT, None, {}, "missing_signature", "X-Vapi-Secret"),
        (None, HMAC, {"X-Vapi-Secret": TOKEN}, "missing_signature", "x-signature"),
        (DEFAULT, HMAC, {}, "missing_signature", "X-Vapi-Secret or Authorization header is "
         "missing; x-signature header is missing"),
        (DEFAULT, HMAC, {"X-Vapi-Secret": OLD_TOKEN}, "invalid_signature", "X-Vapi-Secret"),
        (DEFAULT, HMAC, {"x-timestamp": TS}, "missing_signature", "X-Vapi-Secret"),
        (DEFAULT, HMAC, {"X-Vapi-Secret": OLD_TOKEN, **vapi_credentials.sign_hmac(HMAC, BODY, "1")},
         "stale_timestamp", "window"),
        (DEFAULT, HMAC, {"X-Vapi-Secret": OLD_TOKEN, "x-signature": "garbage"},
         "malformed_signature", "x-signature"),
        (DEFAULT, HMAC, {"x-signature": GOOD_SIGNATURE}, "missing_signature", "x-timestamp"),
    ],
)
def test_most_informative_failure_is_reported(token, hmac_scheme, headers, code, mentions):
    error = assert_rejected(code, wire(headers), vapi_credentials.verify_credentials, token, hmac_scheme, BODY)
    assert mentions in error.message
