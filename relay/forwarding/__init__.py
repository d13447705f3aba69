"""Delivering what the outbox holds: a forwarder per destination (forwarder), one attempt
to Roark (roark) or to a destination (destination) on the one-attempt layer (attempt),
the retry decisions (retry) and what an outage looks like (trouble); the background work
as one (background), run in a process of its own (process) that the server supervises
(supervisor) and sees through the store (remote); and retention."""
