"""Test doubles that ship with the relay (used by its tests, benchmarks and `relay demo`)."""
