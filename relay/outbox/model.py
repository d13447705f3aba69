"""The outbox's records and the contract every storage backend fulfils.

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

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.outbox.traffic import Bucket


#: The built-in destination: Roark's import endpoints.
ROARK = "roark"


class State(str, enum.Enum):
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


class Backend(abc.ABC):
    """A durable outbox store. Methods block; `relay.outbox.runner` calls them off the loop.

    Every method raises `StoreUnavailable` when the store cannot do the work right now.
    """

    @abc.abstractmethod
    def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version."""

    @abc.abstractmethod
    def insert_many(self, items: Sequence[NewDelivery], now: float) -> list[Inserted]:
        """Store new webhooks and their deliveries durably (committed and synced) in one
        transaction.

        A webhook whose (provider, dedupe_key) is already stored is not stored again, nor
        owed again; its result names the existing deliveries with `duplicate=True`.
        """

    @abc.abstractmethod
    def claim(self, token: str, now: float, lease_seconds: float, limit: int,
              max_bytes: int | None = None, destination: str = ROARK) -> list[Delivery]:
        """Lease up to `limit` due deliveries to `destination` (pending and due, or with
        an expired lease), oldest due first, and only as many as fit in `max_bytes` of
        bodies, though always at least one when any is due; none while the destination
        is paused (`pause_destination`).

        Like `complete_many`, a claim need not be synced: a lost claim only puts rows
        back where they were, to be claimed (and perhaps sent) again.
        """

    def complete(self, delivery_id: int, token: str, completion: Completion) -> bool:
        """Apply `completion` if `token` still holds the lease; False if the lease was lost."""
        return self.complete_many([(delivery_id, token, completion)])[0]

    @abc.abstractmethod
    def complete_many(self, items: Sequence[tuple[int, str, Completion]]) -> list[bool]:
        """`complete` for each (delivery id, token, completion), in one transaction.

        The transaction need not be synced before it returns: losing it to a crash only
        leaves those rows leased (claimed again once the lease expires, so sent once more,
        which `skip_already_imported` makes harmless); it can never lose a webhook.
        """

    @abc.abstractmethod
    def get(self, delivery_id: int) -> Delivery | None: ...

    @abc.abstractmethod
    def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        """Newest first, without bodies. Paging by `before_id` (the last id of the previous
        page) is stable under inserts: new rows only ever get higher ids."""

    @abc.abstractmethod
    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> list[int]:
        """Put failed (or still pending) deliveries back to pending, due now, attempts
        reset; `ids` None means every delivery `where` matches. Rows being delivered
        are left alone, so it is safe while forwarders run. Returns the ids replayed."""

    @abc.abstractmethod
    def prune(self, received_before: float, states: Sequence[State], limit: int) -> int:
        """Delete up to `limit` deliveries in `states` received before the cutoff, and the
        webhooks they leave owed to no one, in one transaction; returns how many
        deliveries. Callers prune a few hundred at a time: one transaction deleting a
        month of history would hold SQLite's write lock, and keep every webhook from
        being stored, for as long as it took."""

    @abc.abstractmethod
    def fail_unconfigured(self, destinations: Sequence[str], now: float) -> dict[str, int]:
        """Fail the pending deliveries to destinations not among `destinations` (taken out
        of the configuration): nobody would ever send them, and waiting they would keep
        the backlog looking stuck. They stay replayable. Returns how many, per destination."""

    @abc.abstractmethod
    def attempts(self, delivery_id: int) -> list[Attempt]: ...

    @abc.abstractmethod
    def counts_by_provider(self) -> dict[str, dict[State, int]]:
        """Deliveries per provider and state (providers with none are absent)."""

    @abc.abstractmethod
    def counts_by_destination(self) -> dict[str, dict[State, int]]:
        """Deliveries per destination and state (destinations with none are absent)."""

    def counts(self) -> dict[State, int]:
        """Deliveries per state, every state present."""
        totals = dict.fromkeys(State, 0)
        for per_state in self.counts_by_provider().values():
            for state, count in per_state.items():
                totals[state] += count
        return totals

    @abc.abstractmethod
    def oldest_pending_received_at(self) -> float | None: ...

    @abc.abstractmethod
    def oldest_claims(self) -> dict[str, float]:
        """When the longest-held claim of each destination was made (deliveries being
        delivered, by destination; destinations with none are absent): one held longer
        than its receiver's timeout is stuck."""

    @abc.abstractmethod
    def pause_destination(self, destination: str, reason: str, now: float) -> None:
        """Send nothing more to `destination`, from any instance, until it is resumed."""

    @abc.abstractmethod
    def resume_destination(self, destination: str) -> bool:
        """Lift a pause; False when the destination was not paused."""

    @abc.abstractmethod
    def paused_destinations(self) -> dict[str, Pause]: ...

    @abc.abstractmethod
    def report_forwarders(self, reports: Sequence[ForwarderReport]) -> None:
        """Record each destination's report, one row per destination: the last report
        wins, whichever process sent it.

        Not synced, like a claim: a report lost to a crash is replaced by the next one."""

    @abc.abstractmethod
    def forwarder_reports(self) -> dict[str, ForwarderReport]:
        """Every destination's last report, by destination; destinations never reported
        are absent. Reports are kept, even of destinations since taken out of the
        configuration: readers look up the destinations they know."""

    @abc.abstractmethod
    def revoke_session(self, nonce: str, expires_at: float, now: float) -> None:
        """Remember that the admin session `nonce` was logged out, until `expires_at`
        (when its cookie is refused anyway); forgets sessions expired by `now`."""

    @abc.abstractmethod
    def session_revoked(self, nonce: str, now: float) -> bool:
        """True if the admin session `nonce` was logged out and has not expired by `now`."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def listen(self, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call `callback` (from any thread) whenever any process stores new work, and
        once when listening starts (work stored while nobody listened announced itself
        to no one). It may also be called when nothing new is due: a wake-up costs a
        claim that finds nothing.

        Returns a function that stops listening, or None when the store cannot push
        (then the forwarder relies on polling, which is fine within one process).
        PostgreSQL pushes with NOTIFY; SQLite watches its file for commits by any other
        connection, so a `relay forward` process hears of webhooks the web process stored."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- reconciliation (relay.reconciliation) ----------------------------------------

    @abc.abstractmethod
    def reconciliations(self) -> list[Reconciliation]:
        """Every provider's reconciliation state (a provider never reconciled is absent)."""

    @abc.abstractmethod
    def lease_reconciliation(self, provider: str, owner: str, now: float,
                             expires_at: float) -> Reconciliation | None:
        """Take the provider's reconciliation lease for `owner` until `expires_at`,
        unless someone else holds a live one: then None, otherwise the state as it stands.
        This is what makes instances sharing a database reconcile one at a time."""

    @abc.abstractmethod
    def save_reconciliation(self, provider: str, owner: str, progress: Progress,
                            expires_at: float) -> bool:
        """Record `progress` and extend the lease, if `owner` still holds it; False when
        the lease was lost (someone else has taken over the provider's run)."""

    @abc.abstractmethod
    def end_reconciliation(self, provider: str, owner: str, outcome: RunOutcome | None) -> bool:
        """Release the lease and record how the run went (None: it was stopped before it
        ended, so nothing is recorded); False when `owner` no longer held the lease."""

    @abc.abstractmethod
    def held(self, provider: str, dedupe_keys: Sequence[str]) -> set[str]:
        """Which of `dedupe_keys` the outbox already holds for `provider`."""

    @abc.abstractmethod
    def renew_reconciliation(self, provider: str, owner: str, expires_at: float) -> bool:
        """Extend the lease to `expires_at`, if `owner` still holds it (a run does, every
        third of its lease, while it lives); False when someone else has taken it over."""

    @abc.abstractmethod
    def traffic(self, now: float, step: float, count: int, destination: str | None = None) -> list[Bucket]:
        """What came in and went out in `count` buckets of `step` seconds, oldest first,
        the last one holding `now`, to every destination or to `destination` alone (see
        relay.outbox.traffic)."""
