"""The outbox's part in reconciliation (relay.reconciliation): per provider, a lease so
that instances sharing a database take turns, how far the runs got, how the last one
ended; and which webhooks are held already. Written once for both backends, like the
rest of the outbox's SQL: `relay.outbox.statements.Statements` and
`relay.outbox.sql.SQLBackend` take these in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.outbox.model import Progress, Reconciliation, RunOutcome

Query = tuple[str, Sequence[object]]

RECONCILIATION_COLUMNS = (
    "provider, reconciled_until, pending_start, pending_end, pending_token, lease_owner, "
    "lease_expires_at, last_run_at, last_success_at, last_queued, last_error, failing_since"
)
RECONCILIATIONS = f"SELECT {RECONCILIATION_COLUMNS} FROM reconciliation ORDER BY provider"


class ReconciliationStatements:
    """Mixed into `relay.outbox.statements.Statements`, whose parameter mark they use."""

    mark: str
    _in: Any  # (column, values) -> "column IN (marks)"

    def add_reconciliation(self, provider: str) -> Query:
        return (f"INSERT INTO reconciliation (provider) VALUES ({self.mark}) ON CONFLICT (provider) DO NOTHING",
                (provider,))

    def lease_reconciliation(self, provider: str, owner: str, now: float, expires_at: float) -> Query:
        m = self.mark
        return (f"UPDATE reconciliation SET lease_owner = {m}, lease_expires_at = {m} WHERE provider = {m} "
                f"AND (lease_owner IS NULL OR lease_owner = {m} OR lease_expires_at <= {m}) "
                f"RETURNING {RECONCILIATION_COLUMNS}",
                (owner, expires_at, provider, owner, now))

    def save_reconciliation(self, provider: str, owner: str, progress: Progress, expires_at: float) -> Query:
        m = self.mark
        return (f"UPDATE reconciliation SET reconciled_until = {m}, pending_start = {m}, pending_end = {m}, "
                f"pending_token = {m}, lease_expires_at = {m} WHERE provider = {m} AND lease_owner = {m}",
                (progress.reconciled_until, progress.pending_start, progress.pending_end,
                 progress.pending_token, expires_at, provider, owner))

    def end_reconciliation(self, provider: str, owner: str, outcome: RunOutcome | None) -> Query:
        m = self.mark
        sets = "lease_owner = NULL, lease_expires_at = NULL"
        params: list[object] = []
        if outcome is not None and outcome.error is None:
            sets += (f", last_run_at = {m}, last_queued = {m}, last_error = NULL, last_success_at = {m}, "
                     "failing_since = NULL")
            params = [outcome.at, outcome.queued, outcome.at]
        elif outcome is not None:
            sets += (f", last_run_at = {m}, last_queued = {m}, last_error = {m}, "
                     f"failing_since = coalesce(failing_since, {m})")
            params = [outcome.at, outcome.queued, outcome.error, outcome.at]
        return (f"UPDATE reconciliation SET {sets} WHERE provider = {m} AND lease_owner = {m}",
                (*params, provider, owner))

    def held(self, provider: str, dedupe_keys: Sequence[str]) -> Query:
        return (f"SELECT dedupe_key FROM webhooks WHERE provider = {self.mark} AND "
                f"{self._in('dedupe_key', dedupe_keys)}", (provider, *dedupe_keys))

    def renew_reconciliation(self, provider: str, owner: str, expires_at: float) -> Query:
        m = self.mark
        return (f"UPDATE reconciliation SET lease_expires_at = {m} WHERE provider = {m} AND lease_owner = {m}",
                (expires_at, provider, owner))


class ReconciliationStore:
    """Mixed into `relay.outbox.sql.SQLBackend`, whose connections and statements they use."""

    SQL: Any
    _write: Any  # (durable) -> a connection in a transaction
    _read: Any  # () -> a connection for reading

    def reconciliations(self) -> list[Reconciliation]:
        with self._read() as conn:
            return [Reconciliation(*row) for row in conn.execute(RECONCILIATIONS).fetchall()]

    def lease_reconciliation(self, provider: str, owner: str, now: float,
                             expires_at: float) -> Reconciliation | None:
        # Not synced, like a claim: a lease lost to a crash only delays the next run.
        with self._write(durable=False) as conn:
            conn.execute(*self.SQL.add_reconciliation(provider))
            row = conn.execute(*self.SQL.lease_reconciliation(provider, owner, now, expires_at)).fetchone()
        return None if row is None else Reconciliation(*row)

    def save_reconciliation(self, provider: str, owner: str, progress: Progress,
                            expires_at: float) -> bool:
        # Not synced: progress lost to a crash only means listing a page again.
        with self._write(durable=False) as conn:
            return conn.execute(*self.SQL.save_reconciliation(provider, owner, progress, expires_at)).rowcount == 1

    def end_reconciliation(self, provider: str, owner: str, outcome: RunOutcome | None) -> bool:
        with self._write() as conn:
            return conn.execute(*self.SQL.end_reconciliation(provider, owner, outcome)).rowcount == 1

    def held(self, provider: str, dedupe_keys: Sequence[str]) -> set[str]:
        if not dedupe_keys:
            return set()
        with self._read() as conn:
            return {key for (key,) in conn.execute(*self.SQL.held(provider, dedupe_keys)).fetchall()}

    def renew_reconciliation(self, provider: str, owner: str, expires_at: float) -> bool:
        # Not synced, like the lease it extends.
        with self._write(durable=False) as conn:
            return conn.execute(*self.SQL.renew_reconciliation(provider, owner, expires_at)).rowcount == 1
