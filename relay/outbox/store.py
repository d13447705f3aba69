"""The contract every outbox backend fulfils, one small protocol per concern, and the
whole (`Backend`). Methods block; `relay.outbox.runner.AsyncOutbox` runs them off the
event loop. Every method raises `StoreUnavailable` when the store cannot do the work
right now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from relay.core.names import ROARK
from relay.outbox.model import (
    Alert,
    AlertMessage,
    Attempt,
    BadCalls,
    ChannelHealth,
    Completion,
    DeadLetters,
    Delivery,
    DeliveryFilter,
    ForwarderReport,
    Inserted,
    NewDelivery,
    Pause,
    Progress,
    Reconciliation,
    Result,
    ResultState,
    RunOutcome,
    State,
)
from relay.outbox.traffic import Bucket


class Deliveries(Protocol):
    """The webhooks the relay holds and their deliveries: storing, claiming under a lease,
    completing, showing, replaying, pruning."""

    def insert_many(self, items: Sequence[NewDelivery], now: float) -> list[Inserted]:
        """Store new webhooks and their deliveries durably (committed and synced) in one
        transaction.

        A webhook whose (provider, dedupe_key) is already stored is not stored again, nor
        owed again; its result names the existing deliveries with `duplicate=True`.
        """

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

    def complete_many(self, items: Sequence[tuple[int, str, Completion]]) -> list[bool]:
        """`complete` for each (delivery id, token, completion), in one transaction.

        The transaction need not be synced before it returns: losing it to a crash only
        leaves those rows leased (claimed again once the lease expires, so sent once more,
        which `skip_already_imported` makes harmless); it can never lose a webhook.
        """

    def get(self, delivery_id: int) -> Delivery | None: ...

    def list_deliveries(self, where: DeliveryFilter, before_id: int | None, limit: int) -> list[Delivery]:
        """Newest first, without bodies. Paging by `before_id` (the last id of the previous
        page) is stable under inserts: new rows only ever get higher ids."""

    def attempts(self, delivery_id: int) -> list[Attempt]: ...

    def replay(self, ids: Sequence[int] | None, where: DeliveryFilter, now: float) -> list[int]:
        """Put failed (or still pending) deliveries back to pending, due now, attempts
        reset; `ids` None means every delivery `where` matches. Rows being delivered
        are left alone, so it is safe while forwarders run. Returns the ids replayed."""

    def prune(self, received_before: float, states: Sequence[State], limit: int) -> int:
        """Delete up to `limit` deliveries in `states` received before the cutoff, and the
        webhooks they leave owed to no one, in one transaction; returns how many
        deliveries. Callers prune a few hundred at a time: one transaction deleting a
        month of history would hold SQLite's write lock, and keep every webhook from
        being stored, for as long as it took."""

    def fail_unconfigured(self, destinations: Sequence[str], now: float) -> dict[str, int]:
        """Fail the pending deliveries to destinations not among `destinations` (taken out
        of the configuration): nobody would ever send them, and waiting they would keep
        the backlog looking stuck. They stay replayable. Returns how many, per destination."""


class Counts(Protocol):
    """How much is where, for /health, the status page, /metrics and the charts."""

    def counts_by_provider(self) -> dict[str, dict[State, int]]:
        """Deliveries per provider and state (providers with none are absent)."""

    def counts_by_destination(self) -> dict[str, dict[State, int]]:
        """Deliveries per destination and state (destinations with none are absent)."""

    def counts(self) -> dict[State, int]:
        """Deliveries per state, every state present."""
        totals = dict.fromkeys(State, 0)
        for per_state in self.counts_by_provider().values():
            for state, count in per_state.items():
                totals[state] += count
        return totals

    def oldest_pending_received_at(self) -> float | None: ...

    def oldest_claims(self) -> dict[str, float]:
        """When the longest-held claim of each destination was made (deliveries being
        delivered, by destination; destinations with none are absent): one held longer
        than its receiver's timeout is stuck."""

    def traffic(self, now: float, step: float, count: int, destination: str | None = None) -> list[Bucket]:
        """What came in and went out in `count` buckets of `step` seconds, oldest first,
        the last one holding `now`, to every destination or to `destination` alone (see
        relay.outbox.traffic)."""


class Pauses(Protocol):
    """Destinations an operator must resume (they answered 410 Gone), shared by every instance."""

    def pause_destination(self, destination: str, reason: str, now: float) -> None:
        """Send nothing more to `destination`, from any instance, until it is resumed."""

    def resume_destination(self, destination: str) -> bool:
        """Lift a pause; False when the destination was not paused."""

    def paused_destinations(self) -> dict[str, Pause]: ...


class Reports(Protocol):
    """What each forwarder last said of its destination, for a web process that does not forward."""

    def report_forwarders(self, reports: Sequence[ForwarderReport]) -> None:
        """Record each destination's report, one row per destination: the last report
        wins, whichever process sent it.

        Not synced, like a claim: a report lost to a crash is replaced by the next one."""

    def forwarder_reports(self) -> dict[str, ForwarderReport]:
        """Every destination's last report, by destination; destinations never reported
        are absent. Reports are kept, even of destinations since taken out of the
        configuration: readers look up the destinations they know."""


class Sessions(Protocol):
    """Admin sessions logged out, so the cookie stays dead after a restart and on every instance."""

    def revoke_session(self, nonce: str, expires_at: float, now: float) -> None:
        """Remember that the admin session `nonce` was logged out, until `expires_at`
        (when its cookie is refused anyway); forgets sessions expired by `now`."""

    def session_revoked(self, nonce: str, now: float) -> bool:
        """True if the admin session `nonce` was logged out and has not expired by `now`."""


class Reconciliations(Protocol):
    """Each provider's reconciliation (relay.reconciliation): its lease, its progress and
    how its last run ended; and which webhooks are held already."""

    def reconciliations(self) -> list[Reconciliation]:
        """Every provider's reconciliation state (a provider never reconciled is absent)."""

    def lease_reconciliation(self, provider: str, owner: str, now: float,
                             expires_at: float) -> Reconciliation | None:
        """Take the provider's reconciliation lease for `owner` until `expires_at`,
        unless someone else holds a live one: then None, otherwise the state as it stands.
        This is what makes instances sharing a database reconcile one at a time."""

    def save_reconciliation(self, provider: str, owner: str, progress: Progress,
                            expires_at: float) -> bool:
        """Record `progress` and extend the lease, if `owner` still holds it; False when
        the lease was lost (someone else has taken over the provider's run)."""

    def renew_reconciliation(self, provider: str, owner: str, expires_at: float) -> bool:
        """Extend the lease to `expires_at`, if `owner` still holds it (a run does, every
        third of its lease, while it lives); False when someone else has taken it over."""

    def end_reconciliation(self, provider: str, owner: str, outcome: RunOutcome | None) -> bool:
        """Release the lease and record how the run went (None: it was stopped before it
        ended, so nothing is recorded); False when `owner` no longer held the lease."""

    def held(self, provider: str, dedupe_keys: Sequence[str]) -> set[str]:
        """Which of `dedupe_keys` the outbox already holds for `provider`."""


class Alerts(Protocol):
    """Alerts (relay.alerts) and the messages they owe their channels. Opening, reminding
    and resolving an alert add its messages in the same transaction, and only when that
    statement changed the alert: so each message exists once, whoever watches."""

    def open_alerts(self) -> list[Alert]: ...

    def open_alert(self, kind: str, subject: str, summary: str, details: Mapping[str, Any], held_up: int,
                   channels: Sequence[str], now: float) -> Alert | None:
        """Open an alert, owing an `opened` message to each of `channels`; None when one of
        this kind and subject is open already."""

    def see_alert(self, alert_id: int, summary: str, details: Mapping[str, Any], held_up: int, now: float) -> None:
        """Its condition still holds: record what it looks like now (`held_up` only grows)."""

    def resolve_alert(self, alert_id: int, channels: Sequence[str], now: float,
                      forget_before: float) -> Alert | None:
        """Resolve it, owing a `resolved` message to each of `channels`, and forget alerts
        resolved before `forget_before`; None when it was resolved already."""

    def remind_alert(self, alert_id: int, channels: Sequence[str], due_before: float, now: float) -> Alert | None:
        """Owe a `reminder` to each of `channels`, if the alert is open, unacknowledged and
        was last opened or reminded before `due_before`; None otherwise."""

    def acknowledge_alert(self, alert_id: int, now: float) -> Alert | None:
        """Stop its reminders; None when there is no such alert."""

    def get_alert(self, alert_id: int) -> Alert | None: ...

    def alerts_since(self, since: float, limit: int) -> list[Alert]:
        """Open alerts, and those opened or resolved since `since`, newest first."""

    def claim_alert_messages(self, token: str, now: float, lease_seconds: float, limit: int) -> list[AlertMessage]:
        """Lease up to `limit` due messages, oldest first."""

    def finish_alert_message(self, message: AlertMessage, sent: bool, next_attempt_at: float | None,
                             error: str | None, now: float) -> bool:
        """Record a send: sent, due again at `next_attempt_at`, or (None) given up; and the
        channel's health. False when the lease was lost."""

    def alert_channels(self) -> list[ChannelHealth]:
        """Every channel ever sent to, and how it has gone."""

    def mute_subject(self, subject: str, until: float) -> None: ...

    def muted_subjects(self, now: float) -> dict[str, float]:
        """Subjects muted at `now`, and until when."""

    def waiting_by_destination(self) -> dict[str, tuple[int, float]]:
        """Per destination, its deliveries not yet delivered nor failed: how many, and
        when the oldest was received (destinations with none are absent)."""

    def dead_letters(self, since: Mapping[str, float]) -> dict[str, DeadLetters]:
        """Per destination named, its deliveries that failed for good after its time
        (destinations with none are absent)."""


class Results(Protocol):
    """Roark's verdicts on the calls delivered to it (relay.results)."""

    def last_scheduled(self) -> float | None:
        """The latest first fetch scheduled (None: none yet)."""

    def schedule_results(self, kinds: Sequence[str], delay: float, after: float, limit: int) -> float | None:
        """Owe a fetch of each of `kinds`, `delay` after delivery, for up to `limit` calls
        delivered to Roark after `after` (oldest first; those owed already are left as
        they are); returns when the last of them was delivered, None when there was none."""

    def claim_results(self, token: str, now: float, lease_seconds: float, limit: int) -> list[Result]:
        """Lease up to `limit` due fetches, the most overdue first."""

    def record_result(self, result: Result, state: ResultState, next_fetch_at: float, *, fetched: bool = True,
                      status: int | None = None, error: str | None = None, data: Any = None,
                      score: float | None = None, classification: str | None = None, now: float,
                      counted: bool = True) -> bool:
        """Record a fetch (`counted`: as an attempt) and release its lease; False when the
        lease was lost. `data` (Roark's answer) is kept when given."""

    def results_for(self, delivery_ids: Sequence[int]) -> dict[int, dict[str, Result]]:
        """The verdicts of these deliveries, by delivery id and kind."""

    def list_results(self, kind: str | None = None, classification: str | None = None, since: float | None = None,
                     before_id: int | None = None, limit: int = 50) -> list[Result]:
        """Verdicts, newest delivery first; `since` keeps those completed since then."""

    def bad_calls(self, since: float, score_below: float) -> BadCalls | None:
        """Calls whose evaluation completed after `since` and failed or scored below
        `score_below` (None: none)."""


class Backend(Deliveries, Counts, Pauses, Reports, Sessions, Reconciliations, Alerts, Results, Protocol):
    """A durable outbox store: every concern above, and its life."""

    def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version."""

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

    def close(self) -> None: ...
