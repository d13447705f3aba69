"""Where settings come from (the environment, and a .env file), and the variables set
there that name no setting: likely typos, pointed out with the setting they resemble."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

from dotenv import dotenv_values

#: Read from the working directory when present, as the example file suggests.
DOTENV = ".env"
#: The prefixes of the relay's own variables: one that names no setting is likely a typo.
OWN_PREFIXES = ("RELAY_", "ROARK_", "VAPI_", "RETELL_")
#: Variables with those prefixes that only the test suite and benchmarks (tests/, bench/)
#: read: set while the tests run the relay, and no typo of a setting.
TEST_PREFIX = "RELAY_TEST_"
TEST_VARIABLES = frozenset({"RELAY_SCREENSHOTS", "RELAY_CRASH_CYCLES", "RELAY_CRASH_CALLS", "RELAY_CHAOS_CALLS",
                            "RELAY_CHAOS_SHARE", "RELAY_FUZZ_EXAMPLES", "RELAY_BENCH_POSTGRES_URL"})
#: How alike (difflib's ratio) an unknown name must be to a setting's to be suggested as
#: meant: below it, the prefix the two share is most of what makes them alike.
SUGGESTION_CUTOFF = 0.75


def environment() -> dict[str, str]:
    """The real environment over a `.env` file in the working directory, if any."""
    return {**_dotenv(), **os.environ}


def unknown_names(environ: Mapping[str, str], known: frozenset[str]) -> tuple[str, ...]:
    """Variables with the relay's prefixes that name no setting (the tests' own aside)."""
    return tuple(sorted(name for name in environ if name.startswith(OWN_PREFIXES) and name not in known
                        and not name.startswith(TEST_PREFIX) and name not in TEST_VARIABLES))


def unknown_warnings(unknown: Iterable[str], known: frozenset[str]) -> list[str]:
    """One line per unknown variable, with the setting it most resembles."""
    found = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=SUGGESTION_CUTOFF)
        found.append(f"{name} is set but is no setting, so it is ignored; "
                     + (f"did you mean {close[0]}?" if close else "`relay settings` lists every setting"))
    return found


def _dotenv() -> dict[str, str]:
    if not os.path.isfile(DOTENV):
        return {}
    return {name: value for name, value in dotenv_values(DOTENV).items() if value is not None}
