"""The targets of the performance issue, the printed table and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("results")


@dataclass(frozen=True)
class Row:
    label: str
    value: Callable[[dict], float | None]
    fmt: str = "{:,.0f}"
    #: ("≥" or "≤", limit) for a target; margin = how many times over it (≥ 1 means met).
    target: tuple[str, float] | None = None

    def margin(self, value: float) -> float:
        op, limit = self.target
        return value / limit if op == "≥" else limit / value if value else float("inf")


def _get(*path: str) -> Callable[[dict], float | None]:
    def get(results: dict) -> float | None:
        for key in path:
            if not isinstance(results, dict) or key not in results:
                return None
            results = results[key]
        return results
    return get


def _scale_ratio(results: dict) -> float | None:
    scale, empty = _get("scale", "rate")(results), _get("drain_instant", "rate")(results)
    return None if scale is None or not empty else scale / empty


ROWS = (
    Row("1. ingest, relay (req/s)", _get("ingest", "relay", "rate")),
    Row("1. ingest, bare Starlette ceiling (req/s)", _get("ingest", "bare", "rate")),
    Row("1. ingest relay / ceiling", _get("ingest", "ratio"), "{:.2f}", ("≥", 0.30)),
    Row("1. rows stored >= acknowledged (1 = yes)", _get("ingest", "durable"), "{:.0f}", ("≥", 1)),
    Row("1b. ingest while forwarding (req/s)", _get("ingest", "while_forwarding", "rate")),
    Row("1b. forwarded meanwhile (deliveries/s)", _get("ingest", "while_forwarding", "forward_rate")),
    Row("2. ack p50 at fixed rate, forwarding (ms)", _get("latency", "relay", "latency_ms", "p50"), "{:.2f}"),
    Row("2. ack p99 at fixed rate, forwarding (ms)", _get("latency", "relay", "latency_ms", "p99"), "{:.2f}",
        ("≤", 15.0)),
    Row("2. ack p99, forwarder held back (ms)", _get("latency", "ingest_only", "latency_ms", "p99"),
        "{:.2f}"),
    Row("2. bare p99 at the same rate (ms)", _get("latency", "bare", "latency_ms", "p99"), "{:.2f}"),
    Row("2. receipt to Roark p50, forwarding (ms)", _get("latency", "relay", "to_roark_ms", "p50"), "{:.1f}"),
    Row("2. receipt to Roark p99, forwarding (ms)", _get("latency", "relay", "to_roark_ms", "p99"), "{:.1f}"),
    Row("2. receipt to Roark p50, a tenth of the rate (ms)", _get("latency", "relay_tenth", "to_roark_ms", "p50"),
        "{:.1f}"),
    Row("2. receipt to Roark p99, a tenth of the rate (ms)", _get("latency", "relay_tenth", "to_roark_ms", "p99"),
        "{:.1f}", ("≤", 50.0)),
    Row("2. CPU-seconds per million webhooks received and delivered",
        _get("latency", "relay", "cpu_seconds_per_million")),
    Row("2. same, at a tenth of the rate", _get("latency", "relay_tenth", "cpu_seconds_per_million")),
    Row("3. drain, instant upstream (deliveries/s)", _get("drain_instant", "rate"), "{:,.0f}",
        ("≥", 3000)),
    Row("3. forwarding-process CPU per delivery, instant (us)", _get("drain_instant", "forwarder_cpu_us_per_delivery"),
        "{:,.0f}", ("≤", 400)),
    Row("3. drain, 200 ms upstream (deliveries/s)", _get("drain_slow", "rate"), "{:,.0f}",
        ("≥", 500)),
    Row("3. drain, instant, Roark + one destination (deliveries/s)", _get("drain_destination", "rate"),
        "{:,.0f}", ("≥", 2000)),
    Row("4. peak PSS, large reports, forwarding (MB)", _get("memory", "peak_pss_mb"), "{:.0f}",
        ("≤", 200)),
    Row("4. idle PSS (MB)", _get("memory", "idle_pss_mb"), "{:.0f}"),
    Row("4. peak RSS, both processes added up (MB)", _get("memory", "peak_rss_mb"), "{:.0f}"),
    Row("4. same, forwarder held back (MB)", _get("memory", "ingest_only", "peak_rss_mb"), "{:.0f}"),
    Row("4. bare peak RSS, same load (MB)", _get("memory", "bare_peak_rss_mb"), "{:.0f}"),
    Row("5. drain with delivered history (deliveries/s)", _get("scale", "rate")),
    Row("5. with history / empty table", _scale_ratio, "{:.2f}", ("≥", 0.90)),
    # The issue asks how far ingest grows with processes, and names no figure: no targets.
    Row("6. scale-out ingest, 1 process (req/s)", _get("scaleout", "runs", "1", "rate")),
    Row("6. scale-out ingest, 2 processes (req/s)", _get("scaleout", "runs", "2", "rate")),
    Row("6. scale-out ingest, 4 processes (req/s)", _get("scaleout", "runs", "4", "rate")),
    Row("6. most processes (4; tiny: 2) / 1", _get("scaleout", "ratio"), "{:.2f}"),
    Row("6. rows stored >= acknowledged, every run (1 = yes)", _get("scaleout", "durable"), "{:.0f}"),
    Row("7. prune of the history past retention (s)", _get("prune", "prune_seconds"), "{:.1f}"),
    Row("7. every webhook meanwhile acknowledged (1 = yes)", _get("prune", "all_acknowledged"), "{:.0f}",
        ("≥", 1)),
    Row("7. ack p99 meanwhile (ms)", _get("prune", "load", "latency_ms", "p99"), "{:.2f}"),
    Row("7. worst write-lock wait meanwhile, SQLite (ms)", _get("prune", "worst_write_lock_wait_ms"), "{:.1f}"),
    Row("3. worst write-lock wait in the instant drain, SQLite (ms)",
        _get("drain_instant", "worst_write_lock_wait_ms"), "{:.1f}"),
)


def table(results: dict[str, dict]) -> str:
    backends = list(results)
    header = ["measurement", *backends, "target"]
    lines = []
    for row in ROWS:
        cells = [row.label]
        for backend in backends:
            value = row.value(results[backend])
            if value is None:
                cells.append("-")
                continue
            cell = row.fmt.format(float(value))
            if row.target:
                margin = row.margin(float(value))
                cell += f" ({margin:.2f}x {'met' if margin >= 1 else 'MISSED'})"
            cells.append(cell)
        cells.append(f"{row.target[0]} {row.target[1]:g}" if row.target else "")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: list) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    memory = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(int(memory) / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version}


def save(record: dict, path: Path | None = None) -> Path:
    if path is None:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{record['mode']}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
