"""The alert monitor: every RELAY_ALERT_CHECK_SECONDS it observes the relay (the
forwarders' reports, the outbox, reconciliation, this process's refused webhooks), asks
each rule what holds, and opens, sees, reminds or resolves alerts in the store; beside
that, it sends the messages due to the channels.

It runs in the web process, not the forwarding process: it must be able to say that no
forwarding process is running, and the webhooks refused for want of storage are refused
here. Every instance runs one; the store makes each alert and each message happen once
(relay.outbox.alerts), so several instances, or one restarted mid-outage, send nothing
twice. Nothing here is on the path of a webhook or a delivery: a channel that hangs
holds up only its own messages.

When the outbox itself cannot be written, a storage alert cannot be kept there: it is
sent from memory instead, once per process, and recorded (without being sent again)
once the outbox is back.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from relay.alerts.messages import render
from relay.alerts.rules import RULES, Condition, Observation, Receiver, Refusals, Thresholds, storage
from relay.alerts.sending import ChannelClient, Sent, next_try
from relay.core.errors import StoreUnavailable
from relay.core.metrics import Metrics
from relay.core.names import ROARK
from relay.core.periodic import every
from relay.forwarding.remote import STALE_AFTER_SECONDS
from relay.forwarding.view import ForwarderViews
from relay.outbox import Alert, AlertMessage, AsyncOutbox, MessageType
from relay.providers import PROVIDER_NAMES
from relay.reconciliation.service import Reconcilers
from relay.settings import Settings

log = structlog.get_logger("relay.alerts")

#: Alerts resolved longer ago than this are forgotten (the page shows the last week).
KEEP_RESOLVED_SECONDS = 30 * 86400.0
#: Messages sent at once, per check.
SEND_BATCH = 20
#: What counts as a webhook refused for want of storage (relay.http.ingest's outcome).
REFUSED = "unavailable"


def _bursts_since(recent: Sequence[Alert], kind: str, subjects: Sequence[str], window: float,
                  now: float) -> dict[str, float]:
    """Per subject, where the burst a summing kind (dead letters, bad evaluations) counts
    begins: its open alert's own start, or else two windows back (so the first of a
    burst is still seen once it is a window old), but never before its last alert of
    that kind resolved. `recent`: the alerts opened or resolved within two windows."""
    since = dict.fromkeys(subjects, now - 2 * window)
    for alert in recent:
        if alert.kind == kind and alert.subject in since:
            if alert.resolved_at is None:
                since[alert.subject] = float(alert.details.get("since", alert.opened_at)) - 1e-6
            else:
                since[alert.subject] = max(since[alert.subject], alert.resolved_at)
    return since


class Monitor:
    def __init__(self, settings: Settings, outbox: AsyncOutbox, metrics: Metrics, forwarders: ForwarderViews,
                 reconcilers: Reconcilers, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._outbox = outbox
        self._metrics = metrics
        self._forwarders = forwarders
        self._reconcilers = reconcilers
        self._clock = clock
        self._thresholds = Thresholds.of(settings, STALE_AFTER_SECONDS)
        self._clients = {c.name: ChannelClient(c, settings.alert_timeout_seconds, settings.proxy_for(c.url))
                         for c in settings.alerts}
        self._refused_total = 0.0
        self._refusals: deque[tuple[float, int]] = deque()
        #: A storage alert the outbox could not record, sent from memory, and the channels
        #: still owed it: (attempts, when next).
        self._unrecorded: Alert | None = None
        self._unsent: dict[str, tuple[int, float]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        period = self._settings.alert_check_seconds
        self._tasks = [asyncio.create_task(every(period, self._stop, self.check), name="relay-alert-checks"),
                       asyncio.create_task(every(period, self._stop, self.send), name="relay-alert-sends")]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for client in self._clients.values():
            await client.aclose()

    # --- observing and deciding ----------------------------------------------------------

    def _storage_refusals(self, now: float) -> Refusals | None:
        """This process's webhooks refused for want of storage within the window, from
        its own counter (each instance sees only its own)."""
        registry = self._metrics.registry
        total = sum(registry.get_sample_value("relay_webhooks_received_total",
                                              {"provider": provider, "outcome": REFUSED}) or 0.0
                    for provider in PROVIDER_NAMES)
        if total > self._refused_total:
            self._refusals.append((now, int(total - self._refused_total)))
        self._refused_total = total
        while self._refusals and now - self._refusals[0][0] > self._settings.alert_storage_window_seconds:
            self._refusals.popleft()
        if not self._refusals:
            return None
        return Refusals(sum(n for _, n in self._refusals), self._refusals[0][0], self._refusals[-1][0])

    async def observe(self, now: float) -> Observation:
        outbox = self._outbox
        waiting = await outbox.waiting_by_destination()
        stopped = await outbox.paused_destinations()
        receivers = []
        for forwarder in self._forwarders:
            name = forwarder.destination
            count, oldest = waiting.get(name, (0, None))
            receivers.append(Receiver(
                name, forwarder.receiver, paused=forwarder.pause_reason,
                stopped=stopped[name].reason if name in stopped else None,
                failing_since=forwarder.trouble.failing_since, failure=forwarder.trouble.last_failure,
                last_attempt_at=forwarder.trouble.last_attempt_at, waiting=count, oldest_waiting_at=oldest))
        reconciliation = {}
        if self._reconcilers.sources:
            reconciliation = self._reconcilers.problems_by_provider(await outbox.reconciliations(), now)
        settings = self._settings
        recent = await outbox.alerts_since(now - 2 * max(settings.alert_dead_letter_window_seconds,
                                                         settings.alert_evaluation_window_seconds), 100)
        letters_since = _bursts_since(recent, "dead_letter", (ROARK, *(d.name for d in settings.destinations)),
                                      settings.alert_dead_letter_window_seconds, now)
        bad_calls = None
        if "evaluation" in settings.results:
            since = _bursts_since(recent, "evaluation", ("evaluations",), settings.alert_evaluation_window_seconds, now)
            bad_calls = await outbox.bad_calls(since["evaluations"], settings.alert_score_below)
        return Observation(
            now, tuple(receivers), self._forwarders.silent_since(now), await outbox.dead_letters(letters_since),
            reconciliation, self._storage_refusals(now), bad_calls)

    def _channels(self, kind: str, subject: str, muted: dict[str, float]) -> list[str]:
        if subject in muted:
            return []
        return [c.name for c in self._settings.alerts if kind in c.kinds]

    async def _check(self) -> None:
        """Observe once, and bring the alerts in the store in line with what holds."""
        now = self._clock()
        outbox = self._outbox
        open_alerts = await outbox.open_alerts()
        observation = await self.observe(now)
        muted = await outbox.muted_subjects(now)
        by_key = {(a.kind, a.subject): a for a in open_alerts}
        if told := self._unrecorded:
            # The outbox is back: what was told from memory is recorded (not told again), so
            # its end is told as every alert's is.
            if ("storage", told.subject) not in by_key:
                recorded = await outbox.open_alert("storage", told.subject, told.summary, told.details, told.held_up,
                                                   [], told.opened_at)
                if recorded is not None:
                    by_key["storage", told.subject] = recorded
            self._unrecorded, self._unsent = None, {}
        for rule in RULES:
            found = rule.find(observation, self._thresholds)
            if found is None:
                continue  # this observation cannot tell: its alerts stay as they are
            holding = {}
            for condition in found:
                key = (condition.kind, condition.subject)
                alert = by_key.get(key)
                if alert is None:
                    if condition.opens:
                        await self._open(condition, muted, now)
                elif condition.holds:
                    holding[key] = condition
                    await self._still(alert, condition, muted, now)
            for (kind, subject), alert in by_key.items():
                if kind == rule.kind and (kind, subject) not in holding \
                        and now - alert.seen_at >= self._settings.alert_clear_seconds:
                    await self._resolve(alert, muted, now)

    async def _open(self, condition: Condition, muted: dict[str, float], now: float) -> None:
        channels = self._channels(condition.kind, condition.subject, muted)
        alert = await self._outbox.open_alert(condition.kind, condition.subject, condition.summary, condition.details,
                                              condition.held_up, channels, now)
        if alert is None:
            return  # another instance opened it first
        self._metrics.alerts_opened.labels(condition.kind).inc()
        log.warning("alert_opened", alert=alert.id, kind=alert.kind, subject=alert.subject, summary=alert.summary,
                    channels=channels)

    async def _still(self, alert: Alert, condition: Condition, muted: dict[str, float], now: float) -> None:
        await self._outbox.see_alert(alert.id, condition.summary or alert.summary,
                                     condition.details if condition.summary else alert.details, condition.held_up, now)
        remind = self._settings.alert_remind_seconds
        if alert.acknowledged_at is None and now - (alert.reminded_at or alert.opened_at) >= remind:
            channels = self._channels(alert.kind, alert.subject, muted)
            if await self._outbox.remind_alert(alert.id, channels, now - remind, now) is not None:
                log.warning("alert_reminded", alert=alert.id, kind=alert.kind, subject=alert.subject, channels=channels)

    async def _resolve(self, alert: Alert, muted: dict[str, float], now: float) -> None:
        channels = self._channels(alert.kind, alert.subject, muted)
        resolved = await self._outbox.resolve_alert(alert.id, channels, now, now - KEEP_RESOLVED_SECONDS)
        if resolved is not None:
            log.info("alert_resolved", alert=alert.id, kind=alert.kind, subject=alert.subject,
                     lasted_seconds=round(now - alert.opened_at, 1), held_up=alert.held_up, channels=channels)

    async def check(self) -> None:
        """One check, as the monitor runs it every RELAY_ALERT_CHECK_SECONDS: whatever fails
        is logged, and a storage alert the outbox cannot keep is sent from memory."""
        try:
            await self._check()
        except StoreUnavailable as error:
            log.warning("alert_check_failed", error=str(error))
            await self._storage_without_store(str(error))
        except Exception:  # a bug here must not stop the checks, nor the relay
            log.exception("alert_check_failed")

    async def _storage_without_store(self, error: str) -> None:
        """The outbox is down: say so from memory, once, to every channel that takes it,
        each message retried at the following checks as the store would have it."""
        now = self._clock()
        if self._unrecorded is None:
            refused = self._storage_refusals(now)
            if refused is None:
                return
            condition = (storage(Observation(now, storage=refused), self._thresholds) or [])[0]
            self._unrecorded = Alert(0, "storage", condition.subject, f"{condition.summary} ({error})", {}, now, now,
                                     held_up=condition.held_up)
            self._unsent = {c.name: (0, now) for c in self._settings.alerts if "storage" in c.kinds}
            self._metrics.alerts_opened.labels("storage").inc()
            log.error("alert_opened_unrecorded", kind="storage", summary=self._unrecorded.summary)
        for channel, (attempts, due) in list(self._unsent.items()):
            if due > now:
                continue
            sent = await self._deliver(channel, f"alert-unrecorded-{secrets.token_hex(8)}", self._unrecorded,
                                       MessageType.OPENED, now)
            again = self._count(channel, sent, next_try(self._settings.alert_retry, attempts + 1, sent, self._clock()))
            if again is None:
                del self._unsent[channel]
            else:
                self._unsent[channel] = (attempts + 1, again)

    # --- sending ---------------------------------------------------------------------------

    async def _send_due(self) -> None:
        """Send the messages due now, at once."""
        now = self._clock()
        lease = self._settings.alert_timeout_seconds * 2 + 10
        messages = await self._outbox.claim_alert_messages(secrets.token_hex(8), now, lease, SEND_BATCH)
        await asyncio.gather(*(self._send(message) for message in messages))

    async def _send(self, message: AlertMessage) -> None:
        if message.channel not in self._clients:
            # Taken out of RELAY_ALERTS since: nobody will send it.
            await self._outbox.finish_alert_message(message, False, None, "channel no longer configured",
                                                    self._clock())
            return
        sent = await self._deliver(message.channel, f"alert-{message.alert.id}-{message.id}", message.alert,
                                   message.type, self._clock())
        now = self._clock()
        again = self._count(message.channel, sent,
                            next_try(self._settings.alert_retry, message.attempts + 1, sent, now))
        await self._outbox.finish_alert_message(message, sent.ok, again, None if sent.ok else sent.describe(), now)

    def _count(self, channel: str, sent: Sent, again: float | None) -> float | None:
        outcome = "sent" if sent.ok else "failed" if again is None else "retrying"
        self._metrics.alert_sends.labels(channel, outcome).inc()
        return again

    async def _deliver(self, channel: str, message_id: str, alert: Alert, type_: str, now: float) -> Sent:
        client = self._clients[channel]
        body = render(client.channel.format, alert, type_, now, self._settings.public_url)
        sent = await client.send(message_id, body)
        if sent.ok:
            log.info("alert_sent", channel=channel, alert=alert.id, type=type_)
        else:
            log.warning("alert_send_failed", channel=channel, alert=alert.id, type=type_, error=sent.describe())
        return sent

    async def send(self) -> None:
        """Send what is due, as the monitor does every RELAY_ALERT_CHECK_SECONDS."""
        try:
            await self._send_due()
        except StoreUnavailable as error:
            log.warning("alert_sends_failed", error=str(error))
        except Exception:  # a bug here must not stop the sends, nor the relay
            log.exception("alert_sends_failed")
