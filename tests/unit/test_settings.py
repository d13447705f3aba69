import re
from pathlib import Path

import pytest

from relay.core import envvars
from relay.core.errors import ConfigError
from relay.providers import PROVIDERS
from relay.settings import Secret, Settings, example_file, known_variables

EXAMPLE = Path(__file__).parents[2] / "config" / "relay.env.example"

BASE = {"ROARK_API_KEY": "rk_live_supersecret"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_defaults():
    s = settings()
    assert s.roark_base_url == "https://api.roark.ai"
    assert s.database_url == "sqlite:///relay.db"
    assert s.port == 8000 and s.log_level == "info"
    assert s.max_body_bytes == 25 * 1024 * 1024
    assert s.providers["retell"].api_keys == ()
    assert s.providers["vapi"].token is None and s.providers["vapi"].hmac is None
    warnings = s.provider_warnings()
    assert "VAPI_SECRET or VAPI_HMAC_SECRET" in warnings["vapi"][0]
    assert "RETELL_API_KEY" in warnings["retell"][0]


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
    vapi = s.providers["vapi"]
    text = repr(s) + str(s) + repr(vapi.token) + repr(vapi.hmac)
    for secret in ("rk_live_supersecret", "retell-key-1", "retell-key-2", "vapi-token", "vapi-hmac"):
        assert secret not in text


def test_a_proxy_url_with_a_password_is_not_shown_by_repr():
    s = settings(HTTPS_PROXY="http://user:proxy-password@proxy:3128")
    assert s.roark_proxy == "http://user:proxy-password@proxy:3128"
    assert "proxy-password" not in repr(s)


def test_comma_separated_secrets_allow_rotation():
    s = settings(RETELL_API_KEY="old, new,", VAPI_SECRET="a,b")
    assert [k.reveal() for k in s.providers["retell"].api_keys] == ["old", "new"]
    assert s.providers["vapi"].token.tokens == ("a", "b")


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
    vapi = s.providers["vapi"]
    assert vapi.token.header == "X-Custom" and vapi.token.prefix == ""
    h = vapi.hmac
    assert (h.algorithm, h.encoding, h.prefix, h.secret_is_base64) == ("sha512", "base64", "sha512=", True)
    assert not any("VAPI_SECRET" in warning for warning in s.provider_warnings()["vapi"])


def test_insecure_opt_out_is_explicit_per_provider():
    warnings = settings(RELAY_INSECURE_SKIP_VERIFICATION="retell").provider_warnings()
    assert "disabled" in warnings["retell"][0]
    assert "VAPI_SECRET" in warnings["vapi"][0]


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
    token = "k3Yb-9qTx_Lm2vWz8RcN4pHs"
    assert settings(RELAY_ADMIN_TOKEN=token).admin_token.reveal() == token
    assert token not in repr(settings(RELAY_ADMIN_TOKEN=token))
    with pytest.raises(ConfigError) as caught:
        settings(RELAY_ADMIN_TOKEN="short")
    assert caught.value.variable == "RELAY_ADMIN_TOKEN"


@pytest.mark.parametrize("weak", [
    "passwordpassword", "aaaaaaaaaaaaaaaa", "1234567890123456", "abcabcabcabcabcabcabc",
])
def test_a_guessable_admin_token_is_refused(weak):
    with pytest.raises(ConfigError) as caught:
        settings(RELAY_ADMIN_TOKEN=weak)
    assert caught.value.variable == "RELAY_ADMIN_TOKEN" and weak not in str(caught.value)


@pytest.mark.parametrize("variable", ["ROARK_API_KEY", "RETELL_API_KEY", "VAPI_SECRET", "VAPI_HMAC_SECRET"])
def test_the_admin_token_is_not_a_provider_secret(variable):
    token = "k3Yb-9qTx_Lm2vWz8RcN4pHs"
    with pytest.raises(ConfigError) as caught:
        # Provider secrets may list several (rotation); ROARK_API_KEY is one.
        value = token if variable == "ROARK_API_KEY" else f"another-secret-0987,{token}"
        settings(**{variable: value, "RELAY_ADMIN_TOKEN": token})
    assert caught.value.variable == "RELAY_ADMIN_TOKEN" and variable in str(caught.value)
    assert token not in str(caught.value)


def test_sources_must_be_named_objects():
    assert settings(RELAY_SOURCES='{"acme": {"business_name": "Acme"}}').sources == {"acme": {"business_name": "Acme"}}
    for bad in ('{"acme": "Acme"}', '{"a b": {}}', '["acme"]'):
        with pytest.raises(ConfigError) as caught:
            settings(RELAY_SOURCES=bad)
        assert caught.value.variable == "RELAY_SOURCES"


def test_the_example_file_is_written_from_the_declarations():
    # `relay settings > config/relay.env.example` after changing a setting.
    assert EXAMPLE.read_text() == example_file()


def declared():
    for cls in (Settings, *(p.Settings for p in PROVIDERS.values())):
        yield from envvars.variables(cls)


def example_values() -> dict[str, str]:
    values = {}
    for line in EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"(?:# )?([A-Za-z_][A-Za-z0-9_]*)=(.*)", line):
            values[match[1]] = match[2]
    return values


def test_the_example_names_every_variable_and_its_default():
    documented = example_values()
    names = {var.name for _, var in declared()} | {var.fallback for _, var in declared() if var.fallback}
    assert set(documented) == names
    defaults = settings()
    for f, var in declared():
        if var.example is not None or var.required:
            continue
        owners = [defaults, *defaults.providers.values()]
        expected = getattr(next(o for o in owners if f in envvars.dataclasses.fields(o)), f.name)
        written = documented[var.name]
        assert (var.parse(var.name, written) if written else type(expected)()) == expected, var.name


def test_every_setting_has_help_and_a_unique_variable():
    names = [var.name for _, var in declared()]
    assert len(names) == len(set(names))
    assert all(var.help.endswith((".", ")", "=")) for _, var in declared())


def test_bounds_are_enforced_from_the_declaration():
    with pytest.raises(ConfigError, match="at most 512"):
        settings(RELAY_FORWARD_CONCURRENCY="513")
    with pytest.raises(ConfigError, match=r"at least 0\.01"):
        settings(RELAY_POLL_INTERVAL_SECONDS="0.001")


def test_a_retry_policy_that_cannot_work_is_refused():
    with pytest.raises(ConfigError) as caught:
        settings(RELAY_RETRY_BASE_SECONDS="60", RELAY_RETRY_MAX_DELAY_SECONDS="10")
    assert caught.value.variable == "RELAY_RETRY_MAX_DELAY_SECONDS"


@pytest.mark.parametrize("variable", ["ROARK_PROPERTIES", "RELAY_SOURCES", "RELAY_DESTINATIONS"])
@pytest.mark.parametrize("raw, problem", [
    ('{"acme": {"business_name": "Acme"},}', "trailing comma in object at line 1, column 36"),
    ("{'acme': {}}", "at line 1, column 2 (JSON takes double quotes, not single)"),
    ('{\n  "acme": {"business_name": "Acme"}\n  "other": {}\n}', "at line 3, column 3"),
    ('{"acme": {}', "a bracket, brace or quote is left open"),
])
def test_json_that_does_not_parse_says_so_and_where(variable, raw, problem):
    with pytest.raises(ConfigError) as caught:
        settings(**{variable: raw})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: is not valid JSON: ") and str(caught.value).endswith(problem)


def test_json_of_the_wrong_shape_says_which_shape():
    with pytest.raises(ConfigError, match="must be a JSON array"):
        settings(RELAY_DESTINATIONS='{"name": "crm"}')
    with pytest.raises(ConfigError, match="must be a JSON object"):
        settings(ROARK_PROPERTIES="[1]")


@pytest.mark.parametrize("url, relative", [("sqlite://relay.db", "relay.db"),
                                           ("sqlite:/data/relay.db", "data/relay.db")])
def test_a_sqlite_url_short_of_slashes_shows_both_right_forms(url, relative):
    with pytest.raises(ConfigError) as caught:
        settings(RELAY_DATABASE_URL=url)
    assert caught.value.variable == "RELAY_DATABASE_URL" and "scheme" not in str(caught.value)
    assert f"{url} has too few slashes" in str(caught.value)
    assert f"(sqlite:///{relative})" in str(caught.value) and "sqlite:////abs/path" in str(caught.value)


def test_the_examples_placeholder_is_refused_where_it_is_needed():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ROARK_API_KEY": "rk_live_replace_me"})
    assert caught.value.variable == "ROARK_API_KEY" and "still holds the example's placeholder" in str(caught.value)
    # a command that only reads the outbox needs no key: the placeholder is no key at all
    assert Settings.from_env({"ROARK_API_KEY": "rk_live_replace_me"}, forwarding=False).roark_api_key is None


def test_variables_with_the_relays_prefixes_that_name_no_setting_are_pointed_out():
    s = settings(RELAY_DESTINATION="[]", ROARK_API_BASE_URL="https://x", RETELL_NONSENSE_ENTIRELY="1",
                 HOME_DIRECTORY="/home/x", RELAY_TEST_ANYTHING="1")
    assert s.unknown_variable_warnings() == [
        "RELAY_DESTINATION is set but is no setting, so it is ignored; did you mean RELAY_DESTINATIONS?",
        "RETELL_NONSENSE_ENTIRELY is set but is no setting, so it is ignored; `relay settings` lists every setting",
        "ROARK_API_BASE_URL is set but is no setting, so it is ignored; did you mean ROARK_BASE_URL?",
    ]
    assert settings(DATABASE_URL="postgres://u:p@db/relay", https_proxy="http://p:3128").unknown_variables == ()


ROOT = Path(__file__).parents[2]


def test_the_variables_the_tests_and_benchmarks_read_are_not_taken_for_typos():
    """The suites' own knobs are set where they run the relay; a new one must be added to
    relay.settings.TEST_VARIABLES (or be named RELAY_TEST_...), or every run would warn."""
    read = re.compile(r"""(?:environ\.get\(|environ\[|getenv\(|setenv\()\s*["']([A-Z][A-Z0-9_]+)["']""")
    names = {name for folder in ("tests", "bench") for path in (ROOT / folder).rglob("*.py")
             for name in read.findall(path.read_text())}
    assert "RELAY_SCREENSHOTS" in names  # the pattern finds them
    not_settings = dict.fromkeys(names - known_variables(), "1")
    assert settings(**not_settings).unknown_variables == ()
