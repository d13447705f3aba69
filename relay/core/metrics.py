"""Prometheus metrics: what arrived, what reached Roark and each destination, and how far
behind we are.

Counters and the latency histogram are updated as things happen; queue depth, backlog
age and the pause flags are read from the outbox and forwarders when /metrics is
scraped (relay.http.health), so they are true across restarts and across instances
sharing one database.
What the background work counts (delivery attempts, reconciliation) has a registry of
its own, `background`, since that work may run in another process
(relay.forwarding.process), which hands its exposition over.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# `*_created` timestamps double the series count and tell operators nothing here.
disable_created_metrics()


def status_class(status_code: int | None) -> str:
    return "transport_error" if status_code is None else f"{status_code // 100}xx"


class Metrics:
    def __init__(self) -> None:
        # One registry per app, so several apps in one process (tests) do not collide.
        self.registry = CollectorRegistry()
        self.background = CollectorRegistry()
        self.webhooks = Counter(
            "relay_webhooks_received", "Webhooks received, by provider and outcome "
            "(accepted, duplicate, ignored, passed_through, rejected, unanswered, unavailable).",
            ["provider", "outcome"], registry=self.registry,
        )
        self.attempts = Counter(
            "relay_delivery_attempts", "Delivery attempts, by provider, destination (roark or "
            "one of RELAY_DESTINATIONS), outcome (delivered, retryat, giveup, pausedelivery, "
            "stopreceiver) and status class.",
            ["provider", "destination", "outcome", "status_class"], registry=self.background,
        )
        self.attempt_seconds = Histogram(
            "relay_delivery_attempt_duration_seconds", "Duration of one POST to a destination.",
            ["provider", "destination"], registry=self.background,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.passed_through = Counter(
            "relay_passed_through", "Messages passed through to the team's own server, by "
            "provider, event and the status it answered (unanswered: timeout or unreachable).",
            ["provider", "event", "status"], registry=self.registry,
        )
        self.pass_through_seconds = Histogram(
            "relay_pass_through_duration_seconds", "How long the team's server took to answer.",
            ["provider", "event"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 7.5, 10, 20),
        )
        self.queue_depth = Gauge(
            "relay_queue_depth", "Deliveries in the outbox, by destination and state.",
            ["destination", "state"], registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest delivery not yet delivered or failed (0 when none).",
            registry=self.registry,
        )
        self.paused = Gauge(
            "relay_delivery_paused", "1 while delivery to a destination is paused: it rejected "
            "our credentials or URL, or answered 410 Gone and waits for an operator.",
            ["destination"], registry=self.registry,
        )
        self.reconciled = Counter(
            "relay_reconciled_calls", "Calls queued by reconciliation (ended calls whose webhook "
            "never came), by provider.", ["provider"], registry=self.background,
        )
        self.reconcile_runs = Counter(
            "relay_reconciliation_runs", "Reconciliation runs by provider and outcome (ok, failed, "
            "skipped: another instance held the provider, stopped: the relay was shutting down).",
            ["provider", "outcome"], registry=self.background,
        )
        self.result_fetches = Counter(
            "relay_result_fetches", "Fetches of Roark's verdicts (RELAY_RESULTS), by kind (evaluation, "
            "sentiment) and outcome (completed, pending: not finished or not known yet, failed, paused, given_up).",
            ["kind", "outcome"], registry=self.background,
        )
        self.evaluation_scores = Histogram(
            "relay_evaluation_score", "Roark's evaluation score of each call (0-1), once every run finished.",
            registry=self.background, buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        )
        self.evaluated_calls = Counter(
            "relay_evaluated_calls", "Calls whose evaluation finished, by classification (success, failure, "
            "irrelevant, none).", ["classification"], registry=self.background,
        )
        self.alerts_opened = Counter(
            "relay_alerts_opened", "Alerts this instance opened, by kind (relay.alerts).",
            ["kind"], registry=self.registry,
        )
        self.alert_sends = Counter(
            "relay_alert_sends", "Alert messages sent to a channel, by channel and outcome (sent; "
            "retrying: it will be sent again; failed: given up, or refused).",
            ["channel", "outcome"], registry=self.registry,
        )
        self.reconcile_last_success = Gauge(
            "relay_reconciliation_last_success_timestamp_seconds",
            "When a provider's last successful reconciliation run ended (unix time), on any instance.",
            ["provider"], registry=self.registry,
        )
