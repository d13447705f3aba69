"""Alerts: the relay tells someone when delivery is in trouble, once, and again when it
is over (RELAY_ALERTS).

    rules.py      what opens an alert: one pure rule per kind
    monitor.py    observing, opening, reminding and resolving; sending what is due
    messages.py   what Slack and a webhook channel receive
    sending.py    one POST to a channel, and when to try again

The alerts and their messages live in the outbox (relay.outbox.alerts); the channels'
configuration in relay.destinations.channels.
"""

from relay.alerts.monitor import Monitor

__all__ = ["Monitor"]
