"""The benchmark harness (bench/) in its tiny mode: it runs every measurement end to
end and reports them. It asserts that it works, never how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.report import ROWS

ROOT = Path(__file__).resolve().parents[2]


BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory) -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """Both backends' runs at once: each spends most of its time starting relays and
    waiting on them, so side by side they take little longer than one."""
    runs = {}
    for backend in BACKENDS:
        args = ["--tiny", "--backend", backend, "--driver", "python"]
        if backend == "postgres":
            if not os.environ.get("RELAY_TEST_POSTGRES_URL"):
                continue  # the test itself skips, or fails in CI, through postgres_url
            args += ["--postgres-url", os.environ["RELAY_TEST_POSTGRES_URL"]]
        output = tmp_path_factory.mktemp(backend) / "results.json"
        runs[backend] = (subprocess.Popen([sys.executable, "-m", "bench", *args, "--output", str(output)],
                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True), output)
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:  # its test failed or was skipped before it ended
            process.kill()
            process.communicate()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_runs_every_measurement_and_reports_it(backend, bench_runs, request):
    if backend == "postgres":
        request.getfixturevalue("postgres_url")
    process, output = bench_runs[backend]
    stdout, _ = process.communicate(timeout=280)
    assert process.returncode == 0, stdout
    record = json.loads(output.read_text())
    results = record["results"][backend]
    # Scale-out puts several relays on one database: PostgreSQL only.
    scaleout = {"scaleout"} if backend == "postgres" else set()
    assert set(results) == {"ingest", "latency", "drain_instant", "drain_slow", "drain_destination", "memory",
                            "scale", "prune", *scaleout}
    assert not [name for name, result in results.items() if "error" in result], results
    assert results["ingest"]["durable"] and results["latency"]["durable"]
    assert results["drain_instant"]["delivered"] == results["drain_instant"]["rows"]
    # With a destination beside Roark, every webhook is delivered twice.
    assert results["drain_destination"]["delivered"] == 2 * results["drain_destination"]["rows"]
    assert results["prune"]["left"] == 0 and results["prune"]["all_acknowledged"]
    if scaleout:
        runs = results["scaleout"]["runs"]
        assert set(runs) == {"1", "2"}  # tiny mode: 1 and 2 processes
        for processes, measured in runs.items():
            assert measured["rate"] > 0 and measured["rows_stored"] >= measured["accepted"] > 0, processes
    # Every row of the table is printed, with a figure for this backend, except the
    # scale-out ones not measured (all of them on SQLite, 4 processes in tiny mode) and
    # the write-lock waits, which only SQLite has.
    blank = ({"6. scale-out ingest, 4 processes (req/s)", *(row.label for row in ROWS if "write-lock" in row.label)}
             if scaleout else {row.label for row in ROWS if row.label.startswith("6.")})
    for row in ROWS:
        line = next(line for line in stdout.splitlines() if line.startswith(row.label))
        assert (line[len(row.label):].split()[0] == "-") == (row.label in blank), line
