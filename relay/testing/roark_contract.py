"""What Roark accepts and how it refuses: the upstream contract the fakes hold requests to.

roark_contract.json is the spec's schemas, copied so the package checks bodies without
../shared beside it; tests compare the copy with the spec whenever the spec is present.
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator

CONTRACT_PATH = Path(__file__).with_name("roark_contract.json")
_ERROR_TYPES = {400: "validation", 401: "authentication", 403: "forbidden", 404: "not_found",
                429: "rate_limit"}
# Schema messages quote the offending value, which can be a multi-megabyte transcript.
_MAX_PROBLEM_CHARS = 300


class Outcome(NamedTuple):
    """What a fake answers to one request, and how the request broke the contract."""

    status: int
    body: dict[str, Any]
    problems: tuple[str, ...]


def load_contract() -> dict[str, Any]:
    """The embedded schemas, as `{"components": {"schemas": {...}}}` so spec refs resolve."""
    return json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@cache
def validator_for(schema_name: str, field_case: str = "snake") -> Draft202012Validator:
    """A validator for one contract schema; "camel" renames its top-level fields the way
    the official SDK up to 2.24.1 spelled them."""
    components = load_contract()["components"]
    if field_case == "camel":
        schema = components["schemas"][schema_name]
        schema["properties"] = {camel_case(k): v for k, v in schema["properties"].items()}
        schema["required"] = [camel_case(k) for k in schema.get("required", [])]
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    return Draft202012Validator(root)


def error_body(status: int, message: str, error_code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """The ErrorResponse Roark would send with `status`."""
    phrase = BaseHTTPRequestHandler.responses.get(status, ("Error",))[0]
    return {
        "error_type": _ERROR_TYPES.get(status, "internal" if status >= 500 else "validation"),
        "error_code": error_code or phrase.lower().replace(" ", "_").replace("-", "_"),
        "message": message,
        "request_id": f"req_{uuid.uuid4().hex[:16]}",
        **extra,
    }


def rejection(status: int, error_code: str, problem: str) -> Outcome:
    return Outcome(status, error_body(status, problem, error_code), (problem,))


def describe(error: Any) -> str:
    text = error.message if error.json_path == "$" else f"{error.json_path}: {error.message}"
    return text if len(text) <= _MAX_PROBLEM_CHARS else text[: _MAX_PROBLEM_CHARS - 1] + "…"
