"""Roark Relay: a durable webhook relay from VAPI and Retell to Roark Analytics."""

__version__ = "0.1.0"
