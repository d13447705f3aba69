"""The outbox's records and their states (the contract backends fulfil is store.py).

A webhook the relay has acknowledged is stored once; it is owed to each destination that
asked for it (Roark, built in, and those of RELAY_DESTINATIONS), and each of those is a
delivery with its own life:

    pending ──claim──> delivering ──2xx──────────> delivered
       ^                   │ ──retryable error──> pending (next_attempt_at later)
       │                   │ ──permanent / spent─> failed   (dead letter, error kept)
       └──lease expired────┘ ──paused / shutdown─> pending (attempt refunded)

A claim is a lease: it names a token and an expiry. Only the holder of a live lease may
complete a delivery, and nobody else can claim it until the lease expires, so a process
that dies mid-delivery delays that delivery by one lease but never loses it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.names import ROARK


class State(enum.StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class NewDelivery:
    """A webhook to store, and the destinations it is owed to (one delivery each)."""

    provider: str
    event: str
    call_id: str | None
    dedupe_key: str
    body: bytes
    received_at: float
    request_id: str | None = None  # of the webhook request, sent on to Roark
    properties: Mapping[str, Any] | None = None  # from the webhook's URL (see relay.http.sources)
    #: "webhook" when the provider sent it; "reconciliation" when the relay asked the
    #: provider's API for a call whose webhook never came.
    origin: str = "webhook"
    destinations: tuple[str, ...] = (ROARK,)
    #: The provider's own authentication headers, for destinations that pass them on.
    credentials: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.destinations:
            raise ValueError("a webhook owed to no destination is not stored")


@dataclass(frozen=True)
class Inserted:
    #: The delivery to the first of the webhook's destinations (Roark's, when it has one).
    delivery_id: int
    duplicate: bool
    #: Every delivery of the webhook, by destination.
    deliveries: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    id: int
    provider: str
    event: str
    call_id: str | None
    dedupe_key: str
    body: bytes | None  # None in listings, which leave the (possibly large) bodies out
    received_at: float
    state: State
    attempts: int
    next_attempt_at: float
    lease_token: str | None
    lease_expires_at: float | None
    last_status: int | None
    last_error: str | None
    roark_call_id: str | None
    delivered_at: float | None
    updated_at: float
    request_id: str | None = None
    properties: Mapping[str, Any] | None = None
    origin: str = "webhook"
    destination: str = ROARK
    webhook_id: int | None = None
    credentials: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries a listing or bulk replay covers; empty fields match everything."""

    states: tuple[State, ...] = ()
    provider: str | None = None
    destination: str | None = None
    call_id_prefix: str | None = None
    #: Only deliveries tried at least once (pending ones that did: the retrying).
    tried: bool = False
    #: Only deliveries to Roark whose evaluation Roark classified so (relay.results).
    classification: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One POST to Roark, kept for operators to see what failed and why."""

    attempt: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: str


@dataclass(frozen=True)
class Pause:
    """Why a destination gets nothing until an operator resumes it, and since when."""

    reason: str
    since: float


@dataclass(frozen=True)
class ForwarderReport:
    """What a forwarder (in whichever process) last said about its destination.

    Its pause, rate limit and run of failures live in that forwarder's memory; reported
    to the store, they reach /health and the status page of every process, including a
    web process that forwards nothing itself (`relay forward` runs apart from it)."""

    destination: str
    reported_at: float
    paused_reason: str | None = None      # its receiver refused our credentials or URL
    paused_until: float = 0.0
    rate_limited_until: float = 0.0
    failing_since: float | None = None    # relay.forwarding.trouble: the run of retryable failures
    last_failure_at: float | None = None
    last_success_at: float | None = None
    failure: str | None = None            # the last failure, as logged
    failure_status: int | None = None     # its HTTP status; None for no answer


@dataclass(frozen=True)
class Completion:
    """How a claimed delivery ends; applied only while the claimer's lease is alive."""

    state: State
    now: float
    next_attempt_at: float | None = None
    status_code: int | None = None
    error: str | None = None
    roark_call_id: str | None = None
    refund_attempt: bool = False
    attempt: Attempt | None = None


@dataclass(frozen=True)
class Reconciliation:
    """One provider's reconciliation as the database keeps it (see relay.reconciliation)."""

    provider: str
    #: Every call that ended before this (epoch seconds) has been reconciled.
    reconciled_until: float | None = None
    #: A window a run left part-way, and the provider's token for where to go on.
    pending_start: float | None = None
    pending_end: float | None = None
    pending_token: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    last_run_at: float | None = None
    last_success_at: float | None = None
    last_queued: int | None = None
    last_error: str | None = None
    #: When the runs began failing (None while the last run succeeded).
    failing_since: float | None = None

    def running(self, now: float) -> bool:
        """Whether a run holds the provider now, on whichever instance."""
        return self.lease_owner is not None and self.lease_expires_at is not None and self.lease_expires_at > now


@dataclass(frozen=True)
class Progress:
    """Where a provider's reconciliation stands once a page of calls is stored."""

    reconciled_until: float | None
    pending_start: float | None = None
    pending_end: float | None = None
    pending_token: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a reconciliation run ended: when, how many calls it queued, and why it
    failed (None: it succeeded)."""

    at: float
    queued: int
    error: str | None = None


@dataclass(frozen=True)
class Alert:
    """Something wrong an operator is told of (relay.alerts): opened once per `kind` and
    `subject` (at most one open at a time, whichever instance sees it first), resolved
    once. Times are unix seconds; `seen_at` is when an instance last saw its condition
    hold, `held_up` the most deliveries it kept waiting at once (or refused, or failed)."""

    id: int
    kind: str
    subject: str
    summary: str
    details: Mapping[str, Any]
    opened_at: float
    seen_at: float
    resolved_at: float | None = None
    acknowledged_at: float | None = None
    reminded_at: float | None = None
    held_up: int = 0


class MessageType(enum.StrEnum):
    OPENED = "opened"
    REMINDER = "reminder"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class AlertMessage:
    """One alert message owed to one channel, claimed under a lease like a delivery."""

    id: int
    alert: Alert
    channel: str
    type: MessageType
    attempts: int
    lease_token: str


@dataclass(frozen=True)
class ChannelHealth:
    """How sending to an alert channel has gone, on every instance."""

    channel: str
    last_attempt_at: float | None
    last_success_at: float | None
    #: When the current run of failed sends began; None while the last send worked.
    failing_since: float | None
    last_error: str | None
    #: Messages still to send, and messages given up on.
    waiting: int = 0
    failed: int = 0


@dataclass(frozen=True)
class DeadLetters:
    """Deliveries to one destination that failed for good since a moment."""

    count: int
    first_at: float
    last_at: float
    last_error: str | None
    #: A few of their provider call ids, newest first.
    call_ids: tuple[str, ...]


class ResultState(enum.StrEnum):
    PENDING = "pending"  # to be fetched (again) at next_fetch_at
    COMPLETED = "completed"  # every run finished (completed or failed)
    GIVEN_UP = "given_up"  # RELAY_RESULTS_GIVE_UP_SECONDS passed first


@dataclass(frozen=True)
class Result:
    """Roark's verdict of one kind (evaluation, sentiment) on a call delivered to it, kept
    with that delivery (and pruned with it). `data` is Roark's `data` field as it last
    answered; `score` and `classification` are read from it (relay.results.verdict)."""

    delivery_id: int
    kind: str
    roark_call_id: str
    state: ResultState
    attempts: int
    due_from: float
    next_fetch_at: float
    fetched_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    data: Any = None
    score: float | None = None
    classification: str | None = None
    completed_at: float | None = None
    #: The call's, from its webhook (filled by listings).
    provider: str | None = None
    call_id: str | None = None
    lease_token: str | None = None


@dataclass(frozen=True)
class BadCalls:
    """Calls whose evaluation failed or scored low, since a moment (the evaluation alert)."""

    count: int
    first_at: float
    last_at: float
    call_ids: tuple[str, ...]
    #: The evaluators' summaries of a few of them.
    summaries: tuple[str, ...]
