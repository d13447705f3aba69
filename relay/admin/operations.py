"""What operators see and do, the same from the status page and the admin API: the
summary of every destination and provider, pages of deliveries, one delivery whole, the
traffic charts' figures, replays and resumes. Handed the services it works with."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import structlog

from relay.admin.views import alert_json, channel_json, reconciliation_json
from relay.core.timefmt import iso
from relay.forwarding.trouble import stuck
from relay.forwarding.view import ForwarderViews
from relay.outbox import AsyncOutbox, Attempt, Delivery, DeliveryFilter, Reconciliation, Result, State
from relay.outbox.traffic import Bucket
from relay.providers import PROVIDER_NAMES
from relay.settings import Settings

log = structlog.get_logger("relay.admin")

STATES = tuple(state.value for state in State)
#: How far back the alerts' history goes.
ALERT_HISTORY_SECONDS = 7 * 86400.0
ALERT_HISTORY_LIMIT = 200


class Operations:
    def __init__(self, settings: Settings, outbox: AsyncOutbox, forwarders: ForwarderViews,
                 reconciled: Collection[str], clock: Callable[[], float] = time.time) -> None:
        """`reconciled`: the providers this relay reconciles."""
        self._settings = settings
        self._outbox = outbox
        self._forwarders = forwarders
        self._reconciled = reconciled
        self._clock = clock

    async def page(self, where: DeliveryFilter, before_id: int | None, limit: int) -> tuple[list[Delivery], str | None]:
        """One page, newest first, and the opaque cursor of the next (older) page, if any.
        The cursor is the last id shown; ids only grow, so inserts never shift a page."""
        rows = await self._outbox.list_deliveries(where, before_id, limit + 1)
        page = rows[:limit]
        return page, (str(page[-1].id) if len(rows) > limit else None)

    async def delivery(self, delivery_id: int) -> tuple[Delivery, list[Attempt]] | None:
        delivery = await self._outbox.get(delivery_id)
        if delivery is None:
            return None
        return delivery, await self._outbox.attempts(delivery_id)

    async def verdicts(self, delivery_ids: list[int]) -> dict[int, dict[str, Result]]:
        """Roark's verdicts on these deliveries (those to Roark), by id and kind."""
        return await self._outbox.results_for(delivery_ids)

    @property
    def results_enabled(self) -> tuple[str, ...]:
        return self._settings.results

    async def results(self, kind: str | None, classification: str | None, since: float | None,
                      before_id: int | None, limit: int) -> tuple[list[Result], str | None]:
        """One page of verdicts, newest delivery first, and the next page's cursor."""
        rows = await self._outbox.list_results(kind, classification, since, before_id, limit + 2)
        if len(rows) <= limit:
            return rows, None
        # A cursor is a delivery id: a page never splits a delivery's two verdicts.
        page = rows[:limit] + [r for r in rows[limit:] if r.delivery_id == rows[limit - 1].delivery_id]
        return page, (str(page[-1].delivery_id) if len(rows) > len(page) else None)

    async def exists(self, delivery_id: int) -> bool:
        return await self._outbox.get(delivery_id) is not None

    async def reconciliations(self) -> dict[str, tuple[Reconciliation, bool]]:
        """Each provider this relay reconciles or the database has a run of: its state, and
        whether this relay reconciles it."""
        sources = self._reconciled
        states = {r.provider: r for r in await self._outbox.reconciliations()}
        return {name: (states.get(name) or Reconciliation(name), name in sources)
                for name in (*PROVIDER_NAMES, *states) if name in sources or name in states}

    async def summary(self) -> dict[str, Any]:
        outbox, forwarder = self._outbox, self._forwarders.roark
        now = self._clock()
        per_provider = await outbox.counts_by_provider()
        providers = {p: dict.fromkeys(STATES, 0) for p in (*PROVIDER_NAMES, *per_provider)}
        counts = dict.fromkeys(STATES, 0)
        for provider, per_state in per_provider.items():
            for state, count in per_state.items():
                providers[provider][State(state).value] += count
                counts[State(state).value] += count
        oldest = await outbox.oldest_pending_received_at()
        destinations = await self.destinations(now)
        return {
            "counts": counts,
            "providers": providers,
            "oldest_pending_received_at": iso(oldest),
            "oldest_pending_age_seconds": None if oldest is None else round(max(now - oldest, 0.0), 3),
            "paused": forwarder.paused,
            "pause_reason": forwarder.pause_reason,
            "rate_limited_until": iso(forwarder.rate_limited_until) if forwarder.rate_limited_until > now else None,
            "trouble": destinations[0]["trouble"],
            "destinations": destinations,
            "reconciliation": {name: reconciliation_json(state, enabled, now)
                               for name, (state, enabled) in (await self.reconciliations()).items()},
        }

    async def destinations(self, now: float) -> list[dict[str, Any]]:
        """Roark, then each configured destination, then any no longer configured that still
        has deliveries: where it is, its counts, and what holds it back."""
        per_destination = await self._outbox.counts_by_destination()
        stopped = await self._outbox.paused_destinations()
        claims = await self._outbox.oldest_claims()
        urls = self._settings.destination_urls()
        forwarders = self._forwarders.by_destination
        rows = []
        for name in [*urls, *sorted(set(per_destination) - set(urls))]:
            forwarder = forwarders.get(name)
            rows.append({
                "name": name,
                "url": urls.get(name),
                "counts": {s.value: per_destination.get(name, {}).get(s, 0) for s in State},
                "stopped": None if name not in stopped else {"reason": stopped[name].reason,
                                                              "since": iso(stopped[name].since)},
                "paused": bool(forwarder and forwarder.paused),
                "pause_reason": forwarder.pause_reason if forwarder else None,
                "rate_limited_until": iso(forwarder.rate_limited_until)
                if forwarder and forwarder.rate_limited_until > now else None,
                "trouble": (forwarder.trouble.describe(now) if forwarder else None)
                or stuck(forwarder.receiver if forwarder else name, claims.get(name),
                         self._settings.timeout_of(name), now),
            })
        return rows

    async def traffic(self, step: float, count: int, destination: str | None) -> list[Bucket]:
        return await self._outbox.traffic(self._clock(), step, count, destination)

    async def resume(self, name: str) -> dict[str, Any]:
        """Lift a destination's stop (after a 410), and wake the forwarders."""
        resumed = await self._outbox.resume_destination(name)
        if resumed:
            log.info("destination_resumed", destination=name)
            self._forwarders.wake()
        return {"destination": name, "resumed": resumed}

    async def replay(self, ids: list[int] | None, where: DeliveryFilter) -> dict[str, list[int]]:
        """Back to pending with attempts reset (failed or pending rows only; rows being sent
        and delivered rows are left alone), then wake the forwarders."""
        replayed = await self._outbox.replay(ids, where, self._clock())
        if replayed:
            self._forwarders.wake()
        skipped = sorted(set(ids or ()) - set(replayed))
        return {"replayed": replayed, "skipped": skipped}

    async def alerts(self) -> dict[str, Any]:
        """Open alerts, the last week's resolved ones (newest first), and every channel."""
        now = self._clock()
        muted = await self._outbox.muted_subjects(now)
        alerts = await self._outbox.alerts_since(now - ALERT_HISTORY_SECONDS, ALERT_HISTORY_LIMIT)
        health = {h.channel: h for h in await self._outbox.alert_channels()}
        return {
            "open": [alert_json(a, muted) for a in alerts if a.resolved_at is None],
            "history": [alert_json(a, muted) for a in alerts if a.resolved_at is not None],
            "channels": [channel_json(c, health.get(c.name)) for c in self._settings.alerts],
            "muted": {subject: iso(until) for subject, until in sorted(muted.items())},
        }

    async def acknowledge(self, alert_id: int) -> dict[str, Any] | None:
        """Stop an alert's reminders; None when there is no such alert."""
        now = self._clock()
        alert = await self._outbox.acknowledge_alert(alert_id, now)
        if alert is None:
            return None
        log.info("alert_acknowledged", alert=alert_id, kind=alert.kind, subject=alert.subject)
        return alert_json(alert, await self._outbox.muted_subjects(now))

    @property
    def mute_seconds(self) -> float:
        return self._settings.alert_mute_seconds

    async def mute(self, subject: str) -> float:
        """Send no alert message about `subject` for RELAY_ALERT_MUTE_SECONDS; until when."""
        until = self._clock() + self._settings.alert_mute_seconds
        await self._outbox.mute_subject(subject, until)
        log.info("alert_subject_muted", subject=subject, until=iso(until))
        return until
