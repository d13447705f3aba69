"""Benchmarks of the relay on this machine: ingest, ack latency, forwarding, memory, scale,
scale-out.

`python -m bench` runs them all and prints a table against the targets (BENCHMARKS.md);
each part lives in its own module: the servers it starts (`servers`), the stores it seeds
(`stores`), the load it offers (`load`), the measurements (`scenarios`), the report.
"""
