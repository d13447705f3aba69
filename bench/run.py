"""`python -m bench [--quick] [--backend sqlite|postgres|both]`: run the benchmarks,
print the table against the targets, save everything to bench/results/."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import report, scenarios, wrk
from bench.stores import PostgresStore, SQLiteStore

DEFAULT_POSTGRES_URL = "postgresql://relay:relay@127.0.0.1:5432/relay_test"
MEASUREMENTS = ("ingest", "latency", "drain", "memory", "scale", "scaleout", "prune")
#: Several relay processes on one SQLite file is not a deployment: measured on PostgreSQL only.
POSTGRES_ONLY = {"scaleout"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="smaller sizes, about two minutes a backend")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="seconds: proves the harness works, measures nothing")
    parser.set_defaults(mode="full")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=os.environ.get("RELAY_BENCH_POSTGRES_URL",
                                                                 DEFAULT_POSTGRES_URL),
                        help="a server where the bench may create (and drop) a database")
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto",
                        help="closed-loop load generator (auto: wrk when installed)")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, help="run these measurements only")
    parser.add_argument("--output", type=Path, help="JSON file (default: bench/results/...)")
    parser.add_argument("--profile", action="store_true",
                        help="record a py-spy flame graph of each relay into bench/results/")
    return parser.parse_args(argv)


def run_backend(bench: scenarios.Bench, only: set[str]) -> dict:
    sizes, results = bench.sizes, {}
    steps = {
        "ingest": lambda: scenarios.ingest(bench),
        "latency": lambda: scenarios.latency(bench),
        "drain_instant": lambda: scenarios.drain(bench, sizes.drain_rows, 0.0),
        "drain_slow": lambda: scenarios.drain(bench, sizes.slow_drain_rows, sizes.upstream_delay),
        "drain_destination": lambda: scenarios.drain(bench, sizes.drain_rows, 0.0, destination=True),
        "memory": lambda: scenarios.memory(bench),
        "scale": lambda: scenarios.drain(bench, sizes.drain_rows, 0.0, history=sizes.history_rows),
        "scaleout": lambda: scenarios.scaleout(bench),
        "prune": lambda: scenarios.prune(bench),
    }
    for name, step in steps.items():
        if name.split("_")[0] not in only:
            continue
        started = time.monotonic()
        print(f"  {name} ...", end="", flush=True)
        try:
            results[name] = step()
        except Exception as error:  # noqa: BLE001  (one failed measurement must not lose the others)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        print(f" {time.monotonic() - started:.0f} s", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    driver = args.driver
    if driver == "auto":
        driver = "wrk" if wrk.available() else "python"
        if driver == "python" and args.mode != "tiny":
            print(f"note: {wrk.INSTALL_HINT}; the Python driver competes harder for the CPU",
                  file=sys.stderr)
    elif driver == "wrk" and not wrk.available():
        sys.exit(wrk.INSTALL_HINT)
    sizes = scenarios.SIZES[args.mode]
    only = set(args.only or MEASUREMENTS)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    # The relays inherit this environment: RELAY_FORWARD=inline compares forwarding in the
    # server's process with the default, a process of its own.
    forwarding = os.environ.get("RELAY_FORWARD", "process")
    record = {"mode": args.mode, "driver": driver, "forwarding": forwarding, "machine": report.machine(),
              "sizes": vars(sizes), "results": {}, "store_settings": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as folder:
        logs = Path(folder)
        for backend in backends:
            def new_store(backend=backend):
                return SQLiteStore(logs) if backend == "sqlite" else PostgresStore(args.postgres_url)
            print(f"{backend}:", flush=True)
            probe = new_store()
            record["store_settings"][backend] = probe.settings()
            probe.drop()
            run_id = secrets.token_hex(3)
            profiles = report.RESULTS / f"profiles-{run_id}" if args.profile else None
            if profiles:
                profiles.mkdir(parents=True)
            bench = scenarios.Bench(sizes, logs, new_store, driver, run_id, profiles)
            record["results"][backend] = run_backend(
                bench, only if backend == "postgres" else only - POSTGRES_ONLY)
    record["seconds"] = round(time.monotonic() - started)
    path = report.save(record, args.output)
    print()
    print(report.table(record["results"]))
    print(f"\n{args.mode} run, {driver} driver, forwarding {forwarding}, {record['seconds']} s; "
          f"results in {path}")

