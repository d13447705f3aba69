"""Reconciliation: ask each provider's API which calls ended, and queue those whose
webhook never came (docs/providers.md, "Missed webhooks").

    schedule.py  which window a run covers, what it leaves for the next (pure)
    limits.py    how many pages and how long a run may take, repeated pages (pure)
    api.py       requests to a provider's API: Bearer key, pace, retries, size, errors
    run.py       one run: list, look up, store; progress and outcome under a lease
    service.py   the background task per provider, its logs, metrics and health
    command.py   `relay reconcile`: one run now, printed

What each provider's API looks like is in its own module (relay/providers/*_calls.py).
"""
