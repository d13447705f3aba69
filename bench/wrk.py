"""Closed-loop throughput with wrk (Debian package `wrk`), the leanest load generator
here: it leaves the server nearly all of the CPU it shares with it on this machine.
`bench/wrk_post.lua` gives every request a call id of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.payloads import template

SCRIPT = Path(__file__).with_name("wrk_post.lua")
INSTALL_HINT = "wrk not found: install it with `apt-get install -y wrk` (or use --driver python)"


def available() -> bool:
    return shutil.which("wrk") is not None


def closed_loop(url: str, secret: str, size: int, tag: str, connections: int,
                duration: float, threads: int = 1) -> dict[str, object]:
    """The same result shape as `bench.load` closed loop (latencies p50/p99 only)."""
    if not available():
        raise RuntimeError(INSTALL_HINT)
    prefix, suffix = template(size)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "prefix").write_bytes(prefix)
        (Path(folder) / "suffix").write_bytes(suffix)
        run = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
             "-s", str(SCRIPT), url, "--", f"{folder}/prefix", f"{folder}/suffix", secret, tag],
            capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(out for out in run.stdout.splitlines() if out.startswith("BENCH-JSON "))
    raw = json.loads(line.removeprefix("BENCH-JSON "))
    seconds = raw["duration_us"] / 1e6
    failed = raw["status_errors"]
    return {"requests": raw["requests"], "seconds": round(seconds, 3),
            "rate": round(raw["requests"] / seconds, 1), "accepted": raw["requests"] - failed,
            "statuses": {"2xx": raw["requests"] - failed, "other": failed},
            "socket_errors": sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                  "timeouts")),
            "latency_ms": {"p50": raw["p50_us"] / 1000, "p99": raw["p99_us"] / 1000},
            "connections": connections, "driver": "wrk"}
