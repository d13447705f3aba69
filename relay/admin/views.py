"""How deliveries are shown to people and scripts: the same fields and the same masking
in the CLI, the admin API and the status page."""

from __future__ import annotations

from typing import Any

from relay.core import jsonbody
from relay.core.redaction import Redactor
from relay.core.timefmt import iso
from relay.destinations import Channel
from relay.outbox import Alert, Attempt, ChannelHealth, Delivery, Reconciliation, Result, State


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "destination": d.destination,
        "provider": d.provider,
        "event": d.event,
        "call_id": d.call_id,
        "state": d.state.value,
        "received_at": iso(d.received_at),
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at) if d.state is State.PENDING else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "roark_call_id": d.roark_call_id,
        "delivered_at": iso(d.delivered_at),
        "updated_at": iso(d.updated_at),
        "origin": d.origin,
    }


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "started_at": iso(a.started_at),
        "duration_ms": round(a.duration_ms, 1),
        "status_code": a.status_code,
        "outcome": a.outcome,
        "error": a.error,
    }


def reconciliation_json(r: Reconciliation, enabled: bool, now: float) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "running": r.running(now),
        "stopped_run_owner": None if r.running(now) else r.lease_owner,
        "last_run_at": iso(r.last_run_at),
        "last_queued": r.last_queued,
        "last_error": r.last_error,
        "last_success_at": iso(r.last_success_at),
        "failing_since": iso(r.failing_since),
        "reconciled_until": iso(r.reconciled_until),
    }


def masked_payload(body: bytes | None, redactor: Redactor) -> tuple[Any, str | None]:
    """The stored body with secrets masked, or None and why it cannot be shown. A body
    that is not JSON is never shown: its secrets could not be found to mask them."""
    if body is None:
        return None, "the body is not stored"
    try:
        document = jsonbody.loads(body)
    except (ValueError, RecursionError):
        return None, "not shown: the body is not valid JSON, so secrets in it cannot be masked"
    return redactor.mask(document), None


def alert_json(a: Alert, muted: dict[str, float]) -> dict[str, Any]:
    """`muted`: subjects muted now, and until when."""
    return {
        "id": a.id,
        "kind": a.kind,
        "subject": a.subject,
        "summary": a.summary,
        "state": "open" if a.resolved_at is None else "resolved",
        "opened_at": iso(a.opened_at),
        "resolved_at": iso(a.resolved_at),
        "acknowledged_at": iso(a.acknowledged_at),
        "reminded_at": iso(a.reminded_at),
        "last_seen_at": iso(a.seen_at),
        "held_up": a.held_up,
        "muted_until": iso(muted[a.subject]) if a.subject in muted else None,
        "details": dict(a.details),
    }


def channel_json(channel: Channel, health: ChannelHealth | None) -> dict[str, Any]:
    failing = health is not None and health.failing_since is not None
    return {
        "name": channel.name,
        "format": channel.format,
        "url": channel.shown_url,
        "kinds": sorted(channel.kinds),
        "state": "unused" if health is None else "failing" if failing else "ok",
        "last_success_at": iso(health.last_success_at) if health else None,
        "failing_since": iso(health.failing_since) if health else None,
        "last_error": health.last_error if health else None,
        "waiting": health.waiting if health else 0,
        "given_up": health.failed if health else 0,
    }


def result_json(r: Result, redactor: Redactor | None = None) -> dict[str, Any]:
    """`redactor`: with one, Roark's `data` is included, masked like every payload."""
    shown = {
        "delivery_id": r.delivery_id,
        "kind": r.kind,
        "provider": r.provider,
        "call_id": r.call_id,
        "roark_call_id": r.roark_call_id,
        "state": r.state.value,
        "score": r.score,
        "classification": r.classification,
        "attempts": r.attempts,
        "fetched_at": iso(r.fetched_at),
        "next_fetch_at": iso(r.next_fetch_at) if r.state.value == "pending" else None,
        "completed_at": iso(r.completed_at),
        "last_status": r.last_status,
        "last_error": r.last_error,
    }
    if redactor is not None:
        shown["data"] = None if r.data is None else redactor.mask(r.data)
    return shown
