import pytest

from relay.errors import ConfigError
from relay.settings import Secret, Settings

BASE = {"ROARK_API_KEY": "rk_live_supersecret"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_defaults():
    s = settings()
    assert s.roark_base_url == "https://api.roark.ai"
    assert s.database_url == "sqlite:///relay.db"
    assert s.port == 8000 and s.log_level == "info"
    assert s.max_body_bytes == 25 * 1024 * 1024
    assert s.retell_api_keys == () and s.vapi_token is None and s.vapi_hmac is None
    assert s.verification_missing("vapi") and s.verification_missing("retell")


def test_api_key_is_required_and_named():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({})
    assert caught.value.variable == "ROARK_API_KEY"
    assert "ROARK_API_KEY" in str(caught.value)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ROARK_BASE_URL", "ftp://example.com"),
        ("ROARK_BASE_URL", "not a url"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("RELAY_LOG_LEVEL", "chatty"),
        ("RELAY_DATABASE_URL", "mysql://db/relay"),
        ("RELAY_MAX_BODY_BYTES", "-1"),
        ("RELAY_FORWARD_CONCURRENCY", "0"),
        ("RELAY_RETRY_MAX_ATTEMPTS", "nan"),
        ("RELAY_POLL_INTERVAL_SECONDS", "nan"),
        ("ROARK_PROPERTIES", "[1, 2]"),
        ("ROARK_PROPERTIES", "{oops"),
        ("ROARK_FIELD_CASE", "kebab"),
        ("RELAY_INSECURE_SKIP_VERIFICATION", "twilio"),
        ("VAPI_HMAC_ALGORITHM", "md5"),
        ("VAPI_HMAC_SECRET_BASE64", "maybe"),
        ("RELAY_LEASE_SECONDS", "30"),
    ],
)
def test_invalid_values_name_their_variable(variable, value):
    env = {variable: value}
    if variable.startswith("VAPI_HMAC"):
        env["VAPI_HMAC_SECRET"] = "hmac-secret"
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable)


def test_secrets_are_never_shown_by_repr():
    s = settings(
        RETELL_API_KEY="retell-key-1, retell-key-2",
        VAPI_SECRET="vapi-token",
        VAPI_HMAC_SECRET="vapi-hmac",
    )
    text = repr(s) + str(s) + repr(s.vapi_token) + repr(s.vapi_hmac)
    for secret in ("rk_live_supersecret", "retell-key-1", "retell-key-2", "vapi-token", "vapi-hmac"):
        assert secret not in text


def test_comma_separated_secrets_allow_rotation():
    s = settings(RETELL_API_KEY="old, new,", VAPI_SECRET="a,b")
    assert [k.reveal() for k in s.retell_api_keys] == ["old", "new"]
    assert s.vapi_token.tokens == ("a", "b")


def test_secret_wrapper():
    secret = Secret("hunter2")
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"


def test_database_url_forms():
    assert settings(RELAY_DATABASE_URL="/var/data/relay.db").database_url == "sqlite:////var/data/relay.db"
    assert settings(RELAY_DATABASE_URL="sqlite:///x.db").database_url == "sqlite:///x.db"


def test_vapi_schemes_from_env():
    s = settings(
        VAPI_SECRET="tok", VAPI_SECRET_HEADER="X-Custom", VAPI_SECRET_PREFIX="",
        VAPI_HMAC_SECRET="c2VjcmV0", VAPI_HMAC_ALGORITHM="SHA512", VAPI_HMAC_ENCODING="base64",
        VAPI_HMAC_PREFIX="sha512=", VAPI_HMAC_SECRET_BASE64="true",
    )
    assert s.vapi_token.header == "X-Custom" and s.vapi_token.prefix == ""
    h = s.vapi_hmac
    assert (h.algorithm, h.encoding, h.prefix, h.secret_is_base64) == ("sha512", "base64", "sha512=", True)
    assert not s.verification_missing("vapi")


def test_insecure_opt_out_is_explicit_per_provider():
    s = settings(RELAY_INSECURE_SKIP_VERIFICATION="retell")
    assert not s.verification_missing("retell")
    assert s.verification_missing("vapi")


def test_lease_defaults_to_twice_the_upstream_timeout():
    assert settings(ROARK_TIMEOUT_SECONDS="10").lease_seconds == 20


def test_properties_and_retry_overrides():
    s = settings(ROARK_PROPERTIES='{"env": "prod"}', RELAY_RETRY_MAX_ATTEMPTS="3",
                 RELAY_RETRY_BASE_SECONDS="0.5", ROARK_FIELD_CASE="camel")
    assert s.roark_properties == {"env": "prod"}
    assert s.retry.max_attempts == 3 and s.retry.base_delay == 0.5
    assert s.roark_field_case == "camel"


def test_scheme_errors_become_config_errors():
    with pytest.raises(ConfigError) as caught:
        settings(VAPI_HMAC_SECRET="not base64!!", VAPI_HMAC_SECRET_BASE64="true")
    assert caught.value.variable == "VAPI_HMAC_SECRET"
    assert "not base64!!" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        settings(VAPI_SECRET="tok", VAPI_SECRET_PREFIX="Token ")
    assert caught.value.variable == "VAPI_SECRET_PREFIX"


def test_heroku_database_url_is_used_when_ours_is_unset():
    url = "postgres://u:p@db.example:5432/relay"
    assert settings(DATABASE_URL=url).database_url == url
    assert settings(DATABASE_URL=url, RELAY_DATABASE_URL="sqlite:///x.db").database_url == "sqlite:///x.db"
    with pytest.raises(ConfigError) as caught:
        settings(DATABASE_URL="mysql://x/y")
    assert caught.value.variable == "DATABASE_URL"


def test_admin_token_must_be_long_and_is_secret():
    assert settings().admin_token is None
    token = "a" * 32
    assert settings(RELAY_ADMIN_TOKEN=token).admin_token.reveal() == token
    assert token not in repr(settings(RELAY_ADMIN_TOKEN=token))
    with pytest.raises(ConfigError) as caught:
        settings(RELAY_ADMIN_TOKEN="short")
    assert caught.value.variable == "RELAY_ADMIN_TOKEN"


def test_sources_must_be_named_objects():
    assert settings(RELAY_SOURCES='{"acme": {"business_name": "Acme"}}').sources == {"acme": {"business_name": "Acme"}}
    for bad in ('{"acme": "Acme"}', '{"a b": {}}', '["acme"]'):
        with pytest.raises(ConfigError) as caught:
            settings(RELAY_SOURCES=bad)
        assert caught.value.variable == "RELAY_SOURCES"
