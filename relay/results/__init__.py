"""Roark's verdict comes back (RELAY_RESULTS): evaluations and sentiment per call delivered
to Roark, fetched in the forwarding process, kept with the delivery, shown to operators
and sent to the destinations that ask for them.

    verdict.py    what an answer says: finished or not, score, classification, when next (pure)
    fetcher.py    scheduling and fetching, and the destinations' events

The fetches live in the outbox (relay.outbox.results).
"""

from relay.results.fetcher import ResultFetcher

__all__ = ["ResultFetcher"]
