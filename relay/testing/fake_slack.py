"""A Slack incoming webhook on loopback, for tests and demos of alerts: it takes a POST
whose JSON is a message Slack would post (`text`, and `blocks` in the documented shape of
the block types the relay sends) with 200, and refuses anything else with 400
`invalid_payload` (Slack answers `invalid_blocks` and the like), recording every request.
Scripted behaviours (`Respond(503)`, `Reset()`, ...) work as on `FakeRoark`.

The shape is Block Kit's reference (https://api.slack.com/reference/block-kit/blocks,
.../composition-objects, .../block-elements): the fields and limits of the header,
section, context, actions and divider blocks, text objects and link buttons.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from relay.testing.fake_roark import FakeRoark
from relay.testing.roark_contract import Outcome, describe, rejection


def _text(kind: str, max_length: int) -> dict[str, Any]:
    extra = {"emoji": {"type": "boolean"}} if kind == "plain_text" else {"verbatim": {"type": "boolean"}}
    return {"type": "object", "required": ["type", "text"], "additionalProperties": False,
            "properties": {"type": {"const": kind}, "text": {"type": "string", "minLength": 1,
                                                               "maxLength": max_length}, **extra}}


def _any_text(max_length: int) -> dict[str, Any]:
    return {"oneOf": [_text("plain_text", max_length), _text("mrkdwn", max_length)]}


BLOCK_ID = {"type": "string", "maxLength": 255}
BUTTON = {"type": "object", "required": ["type", "text"], "additionalProperties": False, "properties": {
    "type": {"const": "button"}, "text": _text("plain_text", 75), "action_id": {"type": "string", "maxLength": 255},
    "url": {"type": "string", "maxLength": 3000, "pattern": "^https?://"},
    "value": {"type": "string", "maxLength": 2000}, "style": {"enum": ["primary", "danger"]}}}
BLOCKS: dict[str, dict[str, Any]] = {
    "header": {"required": ["type", "text"], "properties": {
        "type": {"const": "header"}, "text": _text("plain_text", 150), "block_id": BLOCK_ID}},
    "section": {"required": ["type"], "anyOf": [{"required": ["text"]}, {"required": ["fields"]}], "properties": {
        "type": {"const": "section"}, "text": _any_text(3000), "block_id": BLOCK_ID,
        "fields": {"type": "array", "minItems": 1, "maxItems": 10, "items": _any_text(2000)}}},
    "context": {"required": ["type", "elements"], "properties": {
        "type": {"const": "context"}, "block_id": BLOCK_ID,
        "elements": {"type": "array", "minItems": 1, "maxItems": 10, "items": _any_text(3000)}}},
    "actions": {"required": ["type", "elements"], "properties": {
        "type": {"const": "actions"}, "block_id": BLOCK_ID,
        "elements": {"type": "array", "minItems": 1, "maxItems": 25, "items": BUTTON}}},
    "divider": {"required": ["type"], "properties": {"type": {"const": "divider"}, "block_id": BLOCK_ID}},
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 40000},
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "additionalProperties": False, **block} for block in BLOCKS.values()]}},
    },
}
VALIDATOR = Draft202012Validator(MESSAGE_SCHEMA)


def message_problems(message: object) -> list[str]:
    """Why Slack would refuse this message; empty when it would post it."""
    return [describe(error) for error in VALIDATOR.iter_errors(message)]


class FakeSlack(FakeRoark):
    def _success_body(self) -> dict[str, object]:
        return {"ok": True}

    def _evaluate(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Outcome:
        if method != "POST":
            return rejection(405, "method_not_allowed", f"{method} is not allowed here")
        try:
            message = json.loads(body)
        except ValueError:
            return rejection(400, "invalid_payload", "the body is not JSON")
        if problems := message_problems(message):
            return rejection(400, "invalid_blocks", "; ".join(problems))
        return Outcome(200, self._success_body(), ())
