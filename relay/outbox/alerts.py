"""The outbox's part in alerts (relay.alerts): the alerts themselves, at most one open per
kind and subject; the messages each owes its channels, claimed under a lease and retried
like deliveries; how each channel has fared; muted subjects; and the dead letters the
`dead_letter` kind sums up. Written once for both backends, like the rest of the
outbox's SQL: `relay.outbox.statements.Statements` and `relay.outbox.sql.SQLBackend`
take these in.

Each message is created in the transaction that opens, reminds or resolves its alert,
and only by the instance whose statement changed the alert, so however many instances
watch, and however often they restart, each message exists once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from relay.outbox.leases import claim_due
from relay.outbox.model import Alert, AlertMessage, ChannelHealth, DeadLetters, MessageType

Query = tuple[str, Sequence[object]]

ALERT_COLUMNS = ("id, kind, subject, summary, details, opened_at, seen_at, resolved_at, acknowledged_at, "
                 "reminded_at, held_up")
OPEN_ALERTS = f"SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY id"
CHANNELS = ("SELECT c.channel, c.last_attempt_at, c.last_success_at, c.failing_since, c.last_error, "
            "(SELECT count(*) FROM alert_messages m WHERE m.channel = c.channel AND m.state = 'pending'), "
            "(SELECT count(*) FROM alert_messages m WHERE m.channel = c.channel AND m.state = 'failed') "
            "FROM alert_channels c ORDER BY c.channel")
WAITING = ("SELECT destination, count(*), min(received_at) FROM deliveries "
           "WHERE state IN ('pending', 'delivering') GROUP BY destination")
#: Call ids a dead-letter summary names.
CALL_IDS_SHOWN = 5


def alert_from_row(row: Sequence[Any]) -> Alert:
    values = list(row)
    values[4] = json.loads(values[4])
    return Alert(*values)


class AlertStatements:
    """Mixed into `relay.outbox.statements.Statements`, whose parameter mark they use."""

    mark: str
    _marks: Any  # (count) -> "mark, mark, ..."

    def open_alert(self, kind: str, subject: str, summary: str, details: Mapping[str, Any], held_up: int,
                   now: float) -> Query:
        return (f"INSERT INTO alerts (kind, subject, summary, details, opened_at, seen_at, held_up) "
                f"VALUES ({self._marks(7)}) ON CONFLICT (kind, subject) WHERE resolved_at IS NULL DO NOTHING "
                f"RETURNING {ALERT_COLUMNS}",
                (kind, subject, summary, json.dumps(details), now, now, held_up))

    def see_alert(self, alert_id: int, summary: str, details: Mapping[str, Any], held_up: int, now: float) -> Query:
        m = self.mark
        return (f"UPDATE alerts SET summary = {m}, details = {m}, seen_at = {m}, "
                f"held_up = CASE WHEN held_up > {m} THEN held_up ELSE {m} END "
                f"WHERE id = {m} AND resolved_at IS NULL",
                (summary, json.dumps(details), now, held_up, held_up, alert_id))

    def resolve_alert(self, alert_id: int, now: float) -> Query:
        return (f"UPDATE alerts SET resolved_at = {self.mark} WHERE id = {self.mark} AND resolved_at IS NULL "
                f"RETURNING {ALERT_COLUMNS}", (now, alert_id))

    def remind_alert(self, alert_id: int, due_before: float, now: float) -> Query:
        m = self.mark
        return (f"UPDATE alerts SET reminded_at = {m} WHERE id = {m} AND resolved_at IS NULL "
                f"AND acknowledged_at IS NULL AND coalesce(reminded_at, opened_at) <= {m} "
                f"RETURNING {ALERT_COLUMNS}", (now, alert_id, due_before))

    def acknowledge_alert(self, alert_id: int, now: float) -> Query:
        return (f"UPDATE alerts SET acknowledged_at = coalesce(acknowledged_at, {self.mark}) "
                f"WHERE id = {self.mark} RETURNING {ALERT_COLUMNS}", (now, alert_id))

    def get_alert(self, alert_id: int) -> Query:
        return f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = {self.mark}", (alert_id,)

    def alerts_since(self, since: float, limit: int) -> Query:
        return (f"SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL OR opened_at >= {self.mark} "
                f"OR resolved_at >= {self.mark} ORDER BY id DESC LIMIT {self.mark}", (since, since, limit))

    def forget_alerts(self, resolved_before: float) -> Query:
        return f"DELETE FROM alerts WHERE resolved_at < {self.mark}", (resolved_before,)

    def add_messages(self, alert_id: int, channels: Sequence[str], type_: MessageType, now: float) -> Query:
        rows = ", ".join([f"({self._marks(5)})"] * len(channels))
        params: list[object] = []
        for channel in channels:
            params += [alert_id, channel, type_.value, now, now]
        return (f"INSERT INTO alert_messages (alert_id, channel, type, next_attempt_at, created_at) VALUES {rows}",
                params)

    def claim_messages(self, token: str, now: float, lease_seconds: float, limit: int) -> Query:
        return claim_due(self.mark, "alert_messages", "id", "next_attempt_at",
                         "id, alert_id, channel, type, attempts", token, now, lease_seconds, limit)

    def finish_message(self, message_id: int, token: str, sent: bool, next_attempt_at: float | None,
                       error: str | None, now: float) -> Query:
        m = self.mark
        state = "sent" if sent else "pending" if next_attempt_at is not None else "failed"
        return (f"UPDATE alert_messages SET state = {m}, attempts = attempts + 1, next_attempt_at = {m}, "
                f"sent_at = {m}, last_error = {m}, lease_token = NULL, lease_expires_at = NULL "
                f"WHERE id = {m} AND lease_token = {m}",
                (state, next_attempt_at if next_attempt_at is not None else now, now if sent else None,
                 error, message_id, token))

    def channel_outcome(self, channel: str, sent: bool, error: str | None, now: float) -> Query:
        m = self.mark
        if sent:
            return (f"INSERT INTO alert_channels (channel, last_attempt_at, last_success_at) VALUES ({m}, {m}, {m}) "
                    "ON CONFLICT (channel) DO UPDATE SET last_attempt_at = excluded.last_attempt_at, "
                    "last_success_at = excluded.last_success_at, failing_since = NULL, last_error = NULL",
                    (channel, now, now))
        return (f"INSERT INTO alert_channels (channel, last_attempt_at, failing_since, last_error) "
                f"VALUES ({m}, {m}, {m}, {m}) ON CONFLICT (channel) DO UPDATE SET "
                "last_attempt_at = excluded.last_attempt_at, last_error = excluded.last_error, "
                "failing_since = coalesce(alert_channels.failing_since, excluded.failing_since)",
                (channel, now, now, error))

    def mute(self, subject: str, until: float) -> Query:
        return (f"INSERT INTO alert_mutes (subject, until) VALUES ({self._marks(2)}) "
                "ON CONFLICT (subject) DO UPDATE SET until = excluded.until", (subject, until))

    def mutes(self, now: float) -> Query:
        return f"SELECT subject, until FROM alert_mutes WHERE until > {self.mark}", (now,)

    def dead_letter_counts(self, destination: str, since: float) -> Query:
        return (f"SELECT count(*), min(updated_at), max(updated_at) FROM deliveries "
                f"WHERE state = 'failed' AND destination = {self.mark} AND updated_at > {self.mark}",
                (destination, since))

    def dead_letter_examples(self, destination: str, since: float) -> Query:
        return (f"SELECT webhooks.call_id, deliveries.last_error FROM deliveries "
                f"JOIN webhooks ON webhooks.id = deliveries.webhook_id "
                f"WHERE deliveries.state = 'failed' AND deliveries.destination = {self.mark} "
                f"AND deliveries.updated_at > {self.mark} ORDER BY deliveries.updated_at DESC LIMIT {self.mark}",
                (destination, since, CALL_IDS_SHOWN))


class AlertStore:
    """Mixed into `relay.outbox.sql.SQLBackend`, whose connections and statements they use."""

    SQL: Any
    _write: Any  # (durable) -> a connection in a transaction
    _read: Any  # () -> a connection for reading

    def open_alerts(self) -> list[Alert]:
        with self._read() as conn:
            return [alert_from_row(row) for row in conn.execute(OPEN_ALERTS).fetchall()]

    def open_alert(self, kind: str, subject: str, summary: str, details: Mapping[str, Any], held_up: int,
                   channels: Sequence[str], now: float) -> Alert | None:
        with self._write() as conn:
            row = conn.execute(*self.SQL.open_alert(kind, subject, summary, details, held_up, now)).fetchone()
            if row is None:
                return None
            alert = alert_from_row(row)
            if channels:
                conn.execute(*self.SQL.add_messages(alert.id, channels, MessageType.OPENED, now))
        return alert

    def see_alert(self, alert_id: int, summary: str, details: Mapping[str, Any], held_up: int, now: float) -> None:
        # Not synced: a sighting lost to a crash is made again at the next check.
        with self._write(durable=False) as conn:
            conn.execute(*self.SQL.see_alert(alert_id, summary, details, held_up, now))

    def resolve_alert(self, alert_id: int, channels: Sequence[str], now: float,
                      forget_before: float) -> Alert | None:
        with self._write() as conn:
            row = conn.execute(*self.SQL.resolve_alert(alert_id, now)).fetchone()
            if row is None:
                return None
            if channels:
                conn.execute(*self.SQL.add_messages(alert_id, channels, MessageType.RESOLVED, now))
            conn.execute(*self.SQL.forget_alerts(forget_before))
        return alert_from_row(row)

    def remind_alert(self, alert_id: int, channels: Sequence[str], due_before: float, now: float) -> Alert | None:
        with self._write() as conn:
            row = conn.execute(*self.SQL.remind_alert(alert_id, due_before, now)).fetchone()
            if row is not None and channels:
                conn.execute(*self.SQL.add_messages(alert_id, channels, MessageType.REMINDER, now))
        return None if row is None else alert_from_row(row)

    def acknowledge_alert(self, alert_id: int, now: float) -> Alert | None:
        with self._write() as conn:
            row = conn.execute(*self.SQL.acknowledge_alert(alert_id, now)).fetchone()
        return None if row is None else alert_from_row(row)

    def get_alert(self, alert_id: int) -> Alert | None:
        with self._read() as conn:
            row = conn.execute(*self.SQL.get_alert(alert_id)).fetchone()
        return None if row is None else alert_from_row(row)

    def alerts_since(self, since: float, limit: int) -> list[Alert]:
        with self._read() as conn:
            return [alert_from_row(row) for row in conn.execute(*self.SQL.alerts_since(since, limit)).fetchall()]

    def claim_alert_messages(self, token: str, now: float, lease_seconds: float, limit: int) -> list[AlertMessage]:
        # Not synced, like a delivery's claim: a lost claim only puts the messages back.
        with self._write(durable=False) as conn:
            claimed = conn.execute(*self.SQL.claim_messages(token, now, lease_seconds, limit)).fetchall()
            alerts = {}
            for alert_id in sorted({row[1] for row in claimed}):
                alerts[alert_id] = alert_from_row(conn.execute(*self.SQL.get_alert(alert_id)).fetchone())
        return [AlertMessage(message_id, alerts[alert_id], channel, MessageType(type_), attempts, token)
                for message_id, alert_id, channel, type_, attempts in sorted(claimed)]

    def finish_alert_message(self, message: AlertMessage, sent: bool, next_attempt_at: float | None,
                             error: str | None, now: float) -> bool:
        with self._write() as conn:
            kept = conn.execute(*self.SQL.finish_message(message.id, message.lease_token, sent, next_attempt_at,
                                                         error, now)).rowcount == 1
            conn.execute(*self.SQL.channel_outcome(message.channel, sent, error, now))
        return kept

    def alert_channels(self) -> list[ChannelHealth]:
        with self._read() as conn:
            return [ChannelHealth(*row) for row in conn.execute(CHANNELS).fetchall()]

    def mute_subject(self, subject: str, until: float) -> None:
        with self._write() as conn:
            conn.execute(*self.SQL.mute(subject, until))

    def muted_subjects(self, now: float) -> dict[str, float]:
        with self._read() as conn:
            return dict(conn.execute(*self.SQL.mutes(now)).fetchall())

    def waiting_by_destination(self) -> dict[str, tuple[int, float]]:
        with self._read() as conn:
            return {d: (count, oldest) for d, count, oldest in conn.execute(WAITING).fetchall()}

    def dead_letters(self, since: Mapping[str, float]) -> dict[str, DeadLetters]:
        """Per destination, its deliveries that failed for good after `since[destination]`."""
        found = {}
        with self._read() as conn:
            for destination, after in sorted(since.items()):
                count, first, last = conn.execute(*self.SQL.dead_letter_counts(destination, after)).fetchone()
                if not count:
                    continue
                examples = conn.execute(*self.SQL.dead_letter_examples(destination, after)).fetchall()
                found[destination] = DeadLetters(count, first, last, examples[0][1] if examples else None,
                                                 tuple(call_id for call_id, _ in examples if call_id))
        return found
