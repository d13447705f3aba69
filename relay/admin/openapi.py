"""The OpenAPI 3.1 document of the admin API, served at GET /admin/openapi.json.

Built from the same constants the API validates with, so limits and enums cannot drift.
The schemas are plain JSON Schema 2020-12; the tests validate real answers against them.
"""

from __future__ import annotations

from typing import Any

from relay import __version__
from relay.admin.api import (
    CALL_ID_PATTERN,
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    MAX_CALL_ID,
    MAX_ID,
    MAX_IDS,
    MAX_LIMIT,
    RETRYING,
    STATES,
)
from relay.core.names import DESTINATION_NAME
from relay.destinations import ALERT_KINDS, CLASSIFICATIONS, RESULT_KINDS
from relay.outbox import ResultState
from relay.providers import PROVIDER_NAMES


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("ErrorResponse")}}}


ERRORS = {"401": _error("missing or wrong Bearer token")}
TIME = _nullable("string", format="date-time")
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
# Filters: empty means any, as an HTML form sends it.
PROVIDER_FILTER = {"type": "string", "enum": ["", *PROVIDER_NAMES], "description": "empty: any provider"}
DESTINATION_FILTER = {"type": "string", "pattern": f"^({DESTINATION_NAME})?$",
                      "description": "roark or a destination's name (RELAY_DESTINATIONS); empty: any"}
CALL_ID_FILTER = {"type": "string", "maxLength": MAX_CALL_ID, "pattern": CALL_ID_PATTERN,
                  "description": "call id or its beginning; blank: any"}

SCHEMAS: dict[str, Any] = {
    "ErrorResponse": {
        "type": "object",
        "required": ["error_type", "error_code", "message"],
        "properties": {
            "error_type": {"type": "string"}, "error_code": {"type": "string"},
            "message": {"type": "string"}, "parameter": {"type": "string"},
            "details": {"type": "object"}, "request_id": {"type": "string"},
        },
    },
    "StateCounts": {
        "type": "object",
        "required": list(STATES),
        "properties": {state: {"type": "integer", "minimum": 0} for state in STATES},
        "additionalProperties": False,
    },
    "Summary": {
        "type": "object",
        "required": ["counts", "providers", "oldest_pending_received_at", "oldest_pending_age_seconds",
                     "paused", "pause_reason", "rate_limited_until", "trouble", "destinations",
                     "reconciliation"],
        "properties": {
            "counts": _ref("StateCounts"),
            "providers": {"type": "object", "additionalProperties": _ref("StateCounts"),
                          "description": "counts per provider; every known provider is present"},
            "oldest_pending_received_at": TIME,
            "oldest_pending_age_seconds": _nullable("number", minimum=0),
            "paused": {"type": "boolean", "description": "delivery to Roark is paused (e.g. key rejected)"},
            "pause_reason": _nullable("string"),
            "rate_limited_until": {**TIME, "description": "Roark asked us to wait until then"},
            "trouble": {**_nullable("string"),
                        "description": "what is wrong when every attempt of the last minute failed "
                                       "(Roark unreachable, or answering 5xx/429)"},
            "destinations": {"type": "array", "items": _ref("DestinationSummary"),
                             "description": "roark first, then RELAY_DESTINATIONS in order, then any no "
                                            "longer configured that still has deliveries"},
            "reconciliation": {"type": "object", "additionalProperties": _ref("Reconciliation"),
                               "description": "per provider this relay reconciles or that has been "
                                              "reconciled: its runs against the provider's API"},
        },
    },
    "Reconciliation": {
        "type": "object",
        "required": ["enabled", "running", "stopped_run_owner", "last_run_at", "last_queued", "last_error",
                     "last_success_at", "failing_since", "reconciled_until"],
        "properties": {
            "enabled": {"type": "boolean", "description": "this relay has the provider's API key"},
            "running": {"type": "boolean", "description": "a run holds the provider now (on any instance)"},
            "stopped_run_owner": _nullable("string", description="the instance (host:pid:...) whose run "
                                           "stopped without finishing, its lease run out: its process died; "
                                           "null otherwise (the next run takes it over)"),
            "last_run_at": {**TIME, "description": "when the last run ended"},
            "last_queued": _nullable("integer", minimum=0,
                                     description="calls the last run queued (their webhook never came)"),
            "last_error": _nullable("string", description="why the last run failed; null when it succeeded"),
            "last_success_at": TIME,
            "failing_since": {**TIME, "description": "when the runs began failing"},
            "reconciled_until": {**TIME, "description": "every call that ended before this was checked"},
        },
    },
    "DestinationSummary": {
        "type": "object",
        "required": ["name", "url", "counts", "stopped", "paused", "pause_reason", "rate_limited_until",
                     "trouble"],
        "properties": {
            "name": {"type": "string"},
            "url": _nullable("string", description="without credentials; null when no longer configured"),
            "counts": _ref("StateCounts"),
            "stopped": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["reason", "since"],
                "properties": {"reason": {"type": "string"}, "since": {"type": "string", "format": "date-time"}},
            }], "description": "it answered 410 Gone: nothing is sent until resumed"},
            "paused": {"type": "boolean", "description": "it rejected our credentials or URL; retried later"},
            "pause_reason": _nullable("string"),
            "rate_limited_until": TIME,
            "trouble": _nullable("string"),
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "destination", "provider", "event", "call_id", "state", "received_at", "attempts",
                     "next_attempt_at", "last_status", "last_error", "roark_call_id",
                     "delivered_at", "updated_at", "origin"],
        "properties": {
            "id": ID,
            "destination": {"type": "string", "description": "roark, or a name from RELAY_DESTINATIONS"},
            "provider": {"type": "string", "enum": list(PROVIDER_NAMES)},
            "event": {"type": "string"},
            "call_id": _nullable("string"),
            "state": {"type": "string", "enum": list(STATES)},
            "received_at": {"type": "string", "format": "date-time"},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": {**TIME, "description": "set while pending"},
            "last_status": _nullable("integer", description="Roark's last HTTP status"),
            "last_error": _nullable("string", description="last error or Roark's message"),
            "roark_call_id": _nullable("string"),
            "delivered_at": TIME,
            "updated_at": {"type": "string", "format": "date-time"},
            "origin": {"type": "string", "description": "webhook: the provider sent it; reconciliation: "
                                                        "found in the provider's API"},
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["attempt", "started_at", "duration_ms", "status_code", "outcome", "error"],
        "properties": {
            "attempt": {"type": "integer"},
            "started_at": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": "number"},
            "status_code": _nullable("integer"),
            "outcome": {"type": "string", "enum": ["delivered", "retryat", "giveup", "pausedelivery", "stopreceiver"]},
            "error": _nullable("string"),
        },
    },
    "DeliveryDetail": {
        "allOf": [_ref("Delivery"), {
            "type": "object",
            "required": ["attempt_history", "payload", "payload_note", "results"],
            "properties": {
                "attempt_history": {"type": "array", "items": _ref("Attempt")},
                "results": {"type": "array", "items": _ref("Result"),
                            "description": "Roark's verdicts on a delivery to Roark (RELAY_RESULTS), with data"},
                "payload": {"description": "the stored webhook body, secrets masked as ********; "
                                           "null when it cannot be shown (see payload_note)"},
                "payload_note": _nullable("string"),
            },
        }],
    },
    "Result": {
        "type": "object",
        "required": ["delivery_id", "kind", "provider", "call_id", "roark_call_id", "state", "score", "classification",
                     "attempts", "fetched_at", "next_fetch_at", "completed_at", "last_status", "last_error"],
        "properties": {
            "delivery_id": ID, "kind": {"type": "string", "enum": list(RESULT_KINDS)},
            "provider": _nullable("string"), "call_id": _nullable("string"), "roark_call_id": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in ResultState],
                      "description": "pending: asked again at next_fetch_at; completed: every run finished; "
                                     "given_up: not finished within RELAY_RESULTS_GIVE_UP_SECONDS"},
            "score": _nullable("number", minimum=0, maximum=1,
                               description="evaluation: completed runs' scores weighted by evaluator; "
                                           "sentiment: average_sentiment"),
            "classification": _nullable("string", description="evaluation: failure, success or irrelevant; "
                                                              "sentiment: positive, negative or neutral"),
            "attempts": {"type": "integer", "minimum": 0}, "fetched_at": TIME, "next_fetch_at": TIME,
            "completed_at": TIME, "last_status": _nullable("integer"), "last_error": _nullable("string"),
            "data": {"description": "Roark's data field as it last answered (EvaluationRun list or "
                                    "SentimentAnalysis), secrets masked; in a delivery's detail only"},
        },
    },
    "ResultPage": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref("Result")},
            "next_cursor": _nullable("string", description="pass as cursor for the next (older) page"),
        },
    },
    "DeliveryPage": {
        "type": "object",
        "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": _ref("Delivery")},
            "next_cursor": _nullable("string", description="pass as cursor for the next (older) page"),
        },
    },
    "ReplayRequest": {
        "oneOf": [
            {"type": "object", "required": ["ids"], "additionalProperties": False,
             "properties": {"ids": {"type": "array", "items": ID, "minItems": 1, "maxItems": MAX_IDS}}},
            {"type": "object", "required": ["all_failed"], "additionalProperties": False,
             "properties": {"all_failed": {"const": True},
                            "provider": PROVIDER_FILTER, "destination": DESTINATION_FILTER,
                            "call_id": CALL_ID_FILTER}},
        ],
    },
    "Alert": {
        "type": "object",
        "required": ["id", "kind", "subject", "summary", "state", "opened_at", "resolved_at", "acknowledged_at",
                     "reminded_at", "last_seen_at", "held_up", "muted_until", "details"],
        "properties": {
            "id": ID, "kind": {"type": "string", "enum": list(ALERT_KINDS)},
            "subject": {"type": "string", "description": "roark, a destination, a provider, forwarding or outbox"},
            "summary": {"type": "string"}, "state": {"type": "string", "enum": ["open", "resolved"]},
            "opened_at": {"type": "string", "format": "date-time"}, "resolved_at": TIME,
            "acknowledged_at": TIME, "reminded_at": TIME, "last_seen_at": TIME,
            "held_up": {"type": "integer", "minimum": 0,
                        "description": "the most deliveries it kept waiting at once (dead_letter: failed; "
                                       "storage: webhooks refused)"},
            "muted_until": TIME, "details": {"type": "object"},
        },
    },
    "AlertChannel": {
        "type": "object",
        "required": ["name", "format", "url", "kinds", "state", "last_success_at", "failing_since", "last_error",
                     "waiting", "given_up"],
        "properties": {
            "name": {"type": "string"}, "format": {"type": "string", "enum": ["slack", "webhook"]},
            "url": {"type": "string", "description": "scheme and host only"},
            "kinds": {"type": "array", "items": {"type": "string", "enum": list(ALERT_KINDS)}},
            "state": {"type": "string", "enum": ["ok", "failing", "unused"]},
            "last_success_at": TIME, "failing_since": TIME, "last_error": _nullable("string"),
            "waiting": {"type": "integer", "minimum": 0}, "given_up": {"type": "integer", "minimum": 0},
        },
    },
    "Alerts": {
        "type": "object", "required": ["open", "history", "channels", "muted"],
        "properties": {
            "open": {"type": "array", "items": _ref("Alert")},
            "history": {"type": "array", "items": _ref("Alert"), "description": "resolved in the last week"},
            "channels": {"type": "array", "items": _ref("AlertChannel")},
            "muted": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"}},
        },
    },
    "Resumed": {
        "type": "object", "required": ["destination", "resumed"],
        "properties": {"destination": {"type": "string"}, "resumed": {"type": "boolean"}},
    },
    "ReplayResult": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {
            "type": "object",
            "required": ["replayed", "skipped"],
            "properties": {
                "replayed": {"type": "array", "items": ID,
                             "description": "back to pending, attempts reset, due now"},
                "skipped": {"type": "array", "items": ID,
                            "description": "asked for but not replayed: unknown, delivered or being sent"},
            },
        }},
    },
}

PARAMETERS: dict[str, Any] = {
    "id": {"name": "id", "in": "path", "required": True, "schema": ID},
    "state": {"name": "state", "in": "query",
              "description": "empty or all: every state; retrying: pending deliveries that have failed "
                             "at least once",
              "schema": {"type": "string", "enum": [*STATES, RETRYING, "all", ""], "default": "all"}},
    "provider": {"name": "provider", "in": "query", "schema": PROVIDER_FILTER},
    "destination": {"name": "destination", "in": "query", "schema": DESTINATION_FILTER},
    "call_id": {"name": "call_id", "in": "query", "schema": CALL_ID_FILTER},
    "classification": {"name": "classification", "in": "query",
                       "description": "Roark's evaluation of the call (RELAY_RESULTS); empty: any",
                       "schema": {"type": "string", "enum": ["", *CLASSIFICATIONS]}},
    "kind": {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["", *RESULT_KINDS]}},
    "since": {"name": "since", "in": "query",
              "description": "completed at or after this time (ISO 8601, with its offset); empty: any time",
              "schema": {"type": "string", "anyOf": [{"format": "date-time"}, {"maxLength": 0}]}},
    "cursor": {"name": "cursor", "in": "query", "description": "next_cursor of the previous page; empty: the first",
               "schema": {"type": "string", "pattern": CURSOR_PATTERN}},
    "limit": {"name": "limit", "in": "query",
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
}


def _params(*names: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


def _data(schema: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": _ref(schema)}}


def openapi_document() -> dict[str, Any]:
    schemas = {**SCHEMAS, "SummaryResponse": _data("Summary"), "DeliveryResponse": _data("DeliveryDetail"),
               "ResumeResponse": _data("Resumed"), "AlertsResponse": _data("Alerts"),
               "AlertResponse": _data("Alert")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Roark Relay admin API",
            "version": __version__,
            "description": "Inspect and replay the relay's deliveries to Roark and the team's own "
                           "destinations. Every request needs "
                           "'Authorization: Bearer <RELAY_ADMIN_TOKEN>'; without that variable the API "
                           "is disabled (404). Listings are newest first and paged with next_cursor, "
                           "which stays stable while new webhooks arrive.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/admin/api/summary": {"get": {
                "operationId": "getSummary", "summary": "Counts per state and provider, oldest pending, pause",
                # Any request can be malformed HTTP (a bad Transfer-Encoding, say): the server
                # refuses it with 400 before it reaches a route.
                "responses": {"200": _ok("SummaryResponse", "the summary"),
                              "400": _error("malformed HTTP request"), **ERRORS},
            }},
            "/admin/api/deliveries": {"get": {
                "operationId": "listDeliveries", "summary": "Deliveries, newest first, without bodies",
                "parameters": _params("state", "provider", "destination", "call_id", "classification", "cursor",
                                      "limit"),
                "responses": {"200": _ok("DeliveryPage", "one page"), "400": _error("invalid parameter"),
                              **ERRORS},
            }},
            "/admin/api/deliveries/{id}": {"get": {
                "operationId": "getDelivery", "summary": "One delivery with its attempts and masked payload",
                "parameters": _params("id"),
                "responses": {"200": _ok("DeliveryResponse", "the delivery"), "400": _error("invalid id"),
                              "404": _error("no such delivery"), **ERRORS},
            }},
            "/admin/api/deliveries/{id}/replay": {"post": {
                "operationId": "replayDelivery",
                "summary": "Put one failed or pending delivery back to pending, attempts reset (idempotent)",
                "parameters": _params("id"),
                "responses": {"200": _ok("ReplayResult", "replayed, or skipped when delivered or being sent"),
                              "400": _error("invalid id"), "404": _error("no such delivery"), **ERRORS},
            }},
            "/admin/api/replay": {"post": {
                "operationId": "replayDeliveries",
                "summary": "Replay the given ids, or every failed delivery matching the filters",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref("ReplayRequest")}}},
                "responses": {"200": _ok("ReplayResult", "what was replayed"), "400": _error("invalid body"),
                              "413": _error("body too large"), "415": _error("not application/json"),
                              **ERRORS},
            }},
            "/admin/api/destinations/{name}/resume": {"post": {
                "operationId": "resumeDestination",
                "summary": "Send to a destination stopped by a 410 Gone again (failed deliveries stay "
                           "failed until replayed)",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": f"^{DESTINATION_NAME}$"}}],
                "responses": {"200": _ok("ResumeResponse", "resumed, or resumed false when it was not stopped"),
                              "400": _error("invalid name"), **ERRORS},
            }},
            "/admin/api/results": {"get": {
                "operationId": "listResults",
                "summary": "Roark's verdicts on the calls delivered to it, newest first (RELAY_RESULTS)",
                "parameters": _params("kind", "classification", "since", "cursor", "limit"),
                "responses": {"200": _ok("ResultPage", "one page"), "400": _error("invalid parameter"), **ERRORS},
            }},
            "/admin/api/alerts": {"get": {
                "operationId": "listAlerts",
                "summary": "Open alerts, those resolved in the last week, and how each alert channel fares",
                "responses": {"200": _ok("AlertsResponse", "the alerts"), "400": _error("unknown parameter"),
                              **ERRORS},
            }},
            "/admin/api/alerts/{id}/acknowledge": {"post": {
                "operationId": "acknowledgeAlert",
                "summary": "Stop an alert's reminders (idempotent); it still resolves, and says so, when it clears",
                "parameters": _params("id"),
                "responses": {"200": _ok("AlertResponse", "the alert"), "400": _error("invalid id"),
                              "404": _error("no such alert"), **ERRORS},
            }},
        },
        "components": {
            "schemas": schemas,
            "parameters": PARAMETERS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the value of RELAY_ADMIN_TOKEN"}},
        },
    }
