"""The seven measurements, each on a fresh store with fresh processes.

Every function takes a `Bench` (sizes, where logs go, how to make a store and offer
load) and returns plain figures for the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import servers, wrk
from bench.payloads import INGEST_BYTES, LARGE_BYTES
from bench.servers import Server
from bench.stores import Store
from relay.destinations import new_secret
from relay.settings import Settings

#: The one destination beside Roark in the drain that measures fan-out.
DESTINATION = "crm"
#: Seeded history the prune deletes: older than the relay's default retention (30 days).
PRUNED_AGE_SECONDS = 40 * 86400
#: The relay's default RELAY_FORWARD_CONCURRENCY.
ROARK_CONCURRENCY = next(f.default for f in dataclasses.fields(Settings) if f.name == "forward_concurrency")


@dataclass(frozen=True)
class Sizes:
    ingest_seconds: float
    latency_seconds: float
    drain_rows: int
    slow_drain_rows: int
    history_rows: int
    large_reports: int = 20
    large_bytes: int = LARGE_BYTES
    ingest_connections: int = 32
    latency_rate: float = 1000.0
    upstream_delay: float = 0.2
    #: None: the relay's default (128 in flight: 640 deliveries/s against a 200 ms upstream).
    forward_concurrency: int | None = None
    #: Delivered history rows carry small bodies: claims read their index entries only,
    #: and 1M full-size bodies would take minutes to seed.
    history_bytes: int = 1024
    #: Scale-out: how many relay processes share one PostgreSQL database, in turn.
    scaleout_processes: tuple[int, ...] = (1, 2, 4)
    #: Prune: delivered rows past retention, and the webhooks offered a second meanwhile.
    prune_rows: int = 100_000
    prune_rate: float = 200.0


SIZES = {
    "full": Sizes(ingest_seconds=15, latency_seconds=15, drain_rows=100_000,
                  slow_drain_rows=100_000, history_rows=1_000_000, prune_rows=1_000_000),
    "quick": Sizes(ingest_seconds=5, latency_seconds=5, drain_rows=10_000,
                   slow_drain_rows=5_000, history_rows=100_000),
    "tiny": Sizes(ingest_seconds=1, latency_seconds=1, drain_rows=300, slow_drain_rows=300,
                  history_rows=2_000, large_reports=4, large_bytes=256 * 1024, latency_rate=100,
                  ingest_connections=8, scaleout_processes=(1, 2), prune_rows=2_000),
}


@dataclass
class Bench:
    sizes: Sizes
    logs: Path
    new_store: Callable[[], Store]
    driver: str  # "wrk" or "python"
    run_id: str
    profiles: Path | None = None  # a folder: flame graphs of every relay process (py-spy)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def relay(self, store: Store, upstream: Server, name: str, held: bool = False,
              destination: bool = False) -> Server:
        """The relay on `store`, forwarding to `upstream`; `held`: the upstream holds the
        forwarder back, which then claims one delivery before it stops. `destination`:
        one destination beside Roark (RELAY_DESTINATIONS), served by `upstream` too."""
        concurrency = 1 if held else self.sizes.forward_concurrency
        env = servers.relay_env(store.url, upstream.url, concurrency)
        if destination:
            # As many in flight as Roark's forwarder, so the two compare like for like.
            env["RELAY_DESTINATIONS"] = json.dumps([{
                "name": DESTINATION, "url": f"{upstream.url}/hooks", "secret": new_secret(),
                "concurrency": int(env.get("RELAY_FORWARD_CONCURRENCY", ROARK_CONCURRENCY))}])
        profile = self.profiles and self.profiles / f"{store.backend}-{name}.svg"
        return servers.relay(env, self.log(f"relay-{name}"), profile)

    def bare(self) -> Server:
        # Settings the bare app never uses, but uvicorn_config reads (as the relay's).
        env = servers.relay_env("sqlite:///unused.db", "http://127.0.0.1:9", 1)
        return servers.bare(env, self.log("bare"))

    def closed_loop(self, url: str, tag: str, *, connections: int, seconds: float,
                    size: int = INGEST_BYTES, per_connection: int | None = None,
                    driver: str | None = None) -> dict:
        tag = f"{self.run_id}-{tag}"
        if (driver or self.driver) == "wrk":
            return wrk.closed_loop(f"{url}/webhooks/vapi", servers.VAPI_SECRET, size, tag,
                                   connections, seconds)
        extra = ["--per-connection", str(per_connection)] if per_connection else []
        return {**_load("closed", url, tag, size, "--connections", str(connections),
                        "--duration", str(seconds), *extra), "driver": "python"}

    def open_loop(self, url: str, tag: str, rate: float, seconds: float) -> dict:
        return _load("open", url, f"{self.run_id}-{tag}", INGEST_BYTES, "--rate", str(rate),
                     "--duration", str(seconds))


def _load(mode: str, url: str, tag: str, size: int, *args: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-m", "bench.load", mode, "--url", f"{url}/webhooks/vapi",
         "--secret", servers.VAPI_SECRET, "--size", str(size), "--tag", tag, *args],
        capture_output=True, text=True, check=True, cwd=servers.ROOT, timeout=600)
    return json.loads(run.stdout)


def _wait_drained(store: Store, timeout: float) -> tuple[int, float]:
    """Wait until no delivery is pending or in flight: (undelivered at the start, seconds)."""
    started, initial = time.perf_counter(), store.undelivered()
    deadline = started + timeout
    while (left := store.undelivered()) > 0:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{left} of {initial} deliveries left after {timeout:g} s")
        time.sleep(0.2)
    return initial, time.perf_counter() - started


def ingest(bench: Bench) -> dict:
    """1. Closed-loop throughput of durable ingest against the bare ceiling, with the
    forwarder held back (the upstream answers 503 + Retry-After: an outage), then the
    same load while the forwarder delivers everything to an instant upstream."""
    sizes = bench.sizes
    load = dict(connections=sizes.ingest_connections, seconds=sizes.ingest_seconds)
    store = bench.new_store()
    try:
        with (servers.running(lambda: servers.upstream(bench.log("upstream-hold"), hold=True)) as up,
              servers.running(lambda: bench.relay(store, up, "ingest", held=True)) as relay):
            cpu = relay.cpu_seconds()
            result = bench.closed_loop(relay.url, "ingest", **load)
            result["cpu_seconds"] = round(relay.cpu_seconds() - cpu, 2)
        stored = store.rows()
    finally:
        store.drop()
    with servers.running(bench.bare) as bare:
        ceiling = bench.closed_loop(bare.url, "ceiling", **load)
    store = bench.new_store()
    try:
        with (servers.running(lambda: servers.upstream(bench.log("upstream-instant"))) as up,
              servers.running(lambda: bench.relay(store, up, "ingest-forwarding")) as relay):
            forwarding = bench.closed_loop(relay.url, "ingest-forwarding", **load)
            behind = store.undelivered()
    finally:
        store.drop()
    return {
        "relay": result, "bare": ceiling, "ratio": result["rate"] / ceiling["rate"],
        "rows_stored": stored, "acknowledged": result["accepted"],
        "durable": stored >= result["accepted"],
        "while_forwarding": {**forwarding, "undelivered_at_end": behind,
                             "forward_rate": (forwarding["accepted"] - behind) / forwarding["seconds"]},
    }


def latency(bench: Bench) -> dict:
    """2. Ack latency at a fixed offered rate (open loop) while the forwarder delivers
    each webhook as it comes (the steady state), then with the forwarder held back
    (acknowledging only), and the bare endpoint's at the same rate. While forwarding,
    also each webhook's receipt-to-Roark latency (its receipt to Roark's 201, from the
    outbox's own times) and the relay's CPU per webhook received and delivered; both
    again at a tenth of the rate."""
    sizes = bench.sizes
    runs = {}
    for name, hold, rate in (("relay", False, sizes.latency_rate), ("ingest_only", True, sizes.latency_rate),
                             ("relay_tenth", False, sizes.latency_rate / 10)):
        store = bench.new_store()
        try:
            with (servers.running(lambda name=name, hold=hold: servers.upstream(
                      bench.log(f"upstream-latency-{name}"), hold=hold)) as up,
                  servers.running(lambda store=store, up=up, name=name, hold=hold: bench.relay(
                      store, up, f"latency-{name}", held=hold)) as relay):
                cpu = relay.cpu_seconds()
                result = bench.open_loop(relay.url, f"latency-{name}", rate, sizes.latency_seconds)
                if not hold:
                    _wait_drained(store, timeout=60)
                cpu = relay.cpu_seconds() - cpu
                runs[name] = {**result, "rate": rate, "durable": store.rows() >= result["accepted"]}
                if not hold:
                    runs[name] |= {"to_roark_ms": _percentiles(store.delivery_seconds()),
                                   "cpu_seconds_per_million": round(cpu / max(result["accepted"], 1) * 1e6)}
        finally:
            store.drop()
    with servers.running(bench.bare) as bare:
        ceiling = bench.open_loop(bare.url, "latency-bare", sizes.latency_rate, sizes.latency_seconds)
    return {**runs, "bare": ceiling,
            "durable": all(run["durable"] for run in runs.values())}


def _percentiles(seconds: list[float]) -> dict[str, float] | None:
    """p50 and p99 in milliseconds of sorted durations in seconds."""
    if not seconds:
        return None
    return {f"p{q}": round(seconds[min(len(seconds) - 1, int(len(seconds) * q / 100))] * 1000, 2) for q in (50, 99)}


def drain(bench: Bench, rows: int, delay: float, *, history: int = 0, destination: bool = False) -> dict:
    """3 and 5. Seed `rows` pending webhooks (after `history` delivered ones), owed to Roark
    (and to one destination as well, with `destination`), start the relay, and time it
    from ready until no delivery is pending or in flight."""
    store = bench.new_store()
    try:
        seeded = store.seed(history, bench.sizes.history_bytes, delivered=True) if history else 0.0
        seeded += store.seed(rows, INGEST_BYTES, destinations=("roark", DESTINATION) if destination else ("roark",))
        name = f"drain-{delay:g}s-history{history}" + ("-destination" if destination else "")
        with (servers.running(lambda: servers.upstream(bench.log(f"upstream-{delay:g}s"),
                                                       delay=delay)) as up,
              servers.running(lambda: bench.relay(store, up, name, destination=destination)) as relay,
              store.lock_probe() as probe):
            cpu = relay.cpu_seconds(), up.cpu_seconds(), relay.cpu_seconds_by_process()
            initial, seconds = _wait_drained(store, timeout=60 + rows / 50)
            relay_cpu, upstream_cpu = relay.cpu_seconds() - cpu[0], up.cpu_seconds() - cpu[1]
            # The forwarding process is the server's child (relay serve, RELAY_FORWARD=process).
            forwarder_cpu = sum(relay.cpu_seconds_by_process()[1:]) - sum(cpu[2][1:])
            memory = relay.memory_kb()
        delivered = store.rows() - store.undelivered() - history
    finally:
        store.drop()
    return {"rows": rows, "history": history, "destinations": 2 if destination else 1,
            "measured_rows": initial, "seconds": round(seconds, 2), "rate": initial / seconds,
            "delivered": delivered, "seed_seconds": round(seeded, 1),
            "relay_cpu_seconds": round(relay_cpu, 2), "upstream_cpu_seconds": round(upstream_cpu, 2),
            "forwarder_cpu_us_per_delivery": round(forwarder_cpu / max(initial, 1) * 1e6),
            "relay_peak_rss_mb": memory["VmHWM"] / 1024, **(probe.figures() if probe else {})}


def prune(bench: Bench) -> dict:
    """7. Retention deleting a large delivered history (past RELAY_RETENTION_DAYS) at the
    relay's start while webhooks arrive at a fixed rate: how long the prune takes, the
    longest a writer waited for the write lock meanwhile (SQLite), and the webhooks'
    acknowledgements (every one must be a 200)."""
    sizes = bench.sizes
    store = bench.new_store()
    try:
        seeded = store.seed(sizes.prune_rows, sizes.history_bytes, delivered=True, age=PRUNED_AGE_SECONDS)
        with (servers.running(lambda: servers.upstream(bench.log("upstream-prune"))) as up,
              servers.running(lambda: bench.relay(store, up, "prune")) as relay,
              store.lock_probe() as probe):
            started = time.perf_counter()
            load = bench.open_loop(relay.url, "prune", sizes.prune_rate, sizes.latency_seconds)
            while store.rows() - load["accepted"] > 0 and time.perf_counter() - started < 600:
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            left = store.rows() - load["accepted"]
    finally:
        store.drop()
    return {"rows": sizes.prune_rows, "seed_seconds": round(seeded, 1), "prune_seconds": round(seconds, 1),
            "left": left, "load": load, "all_acknowledged": load["accepted"] == load["requests"],
            **(probe.figures() if probe else {})}


def memory(bench: Bench) -> dict:
    """4. Peak RSS of the relay while it ingests concurrent large reports and forwards
    them to an instant upstream; then while it only ingests (the upstream holds the
    forwarder back); and the bare endpoint's under the same load."""
    sizes = bench.sizes
    load = dict(connections=sizes.large_reports, seconds=120, size=sizes.large_bytes,
                per_connection=1, driver="python")
    peaks = {}
    for name, hold in (("forwarding", False), ("ingest_only", True)):
        store = bench.new_store()
        try:
            with (servers.running(lambda name=name, hold=hold: servers.upstream(
                      bench.log(f"upstream-{name}"), hold=hold)) as up,
                  servers.running(lambda store=store, up=up, name=name, hold=hold: bench.relay(
                      store, up, f"memory-{name}", held=hold)) as relay):
                idle, idle_pss = relay.memory_kb()["VmRSS"], relay.pss_kb()
                with _peak(relay.pss_kb) as peak_pss:
                    result = bench.closed_loop(relay.url, f"large-{name}", **load)
                    if not hold:
                        _wait_drained(store, timeout=120)
                peaks[name] = {"accepted": result["accepted"], "idle_rss_mb": idle / 1024,
                               "idle_pss_mb": idle_pss / 1024, "peak_pss_mb": peak_pss() / 1024,
                               "peak_rss_mb": relay.memory_kb()["VmHWM"] / 1024,
                               "peak_rss_mb_by_process": [p["VmHWM"] / 1024 for p in relay.memory_kb_by_process()]}
        finally:
            store.drop()
    with servers.running(bench.bare) as bare:
        bare_idle = bare.memory_kb()["VmRSS"]
        bench.closed_loop(bare.url, "large-bare", **load)
        bare_peak = bare.memory_kb()["VmHWM"]
    return {"reports": sizes.large_reports, "report_bytes": sizes.large_bytes, **peaks["forwarding"],
            "ingest_only": peaks["ingest_only"],
            "bare_idle_rss_mb": bare_idle / 1024, "bare_peak_rss_mb": bare_peak / 1024}


@contextlib.contextmanager
def _peak(sample: Callable[[], int], every: float = 0.05) -> Iterator[Callable[[], int]]:
    """The largest of `sample()`'s values, taken every `every` seconds meanwhile: the
    kernel keeps a peak of RSS (VmHWM) but none of PSS."""
    highest = [sample()]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every):
            with contextlib.suppress(OSError):  # a process that just ended
                highest[0] = max(highest[0], sample())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield lambda: highest[0]
    finally:
        done.set()
        watcher.join()


def _split(total: int, parts: int) -> list[int]:
    """`total` connections shared as evenly as they go among `parts` load generators,
    at least one each."""
    return [max(1, total // parts + (i < total % parts)) for i in range(parts)]


def _ingest_together(bench: Bench, relays: list[Server], tag: str) -> dict:
    """Closed-loop load at every relay at once (each with its own share of the connections
    and its own tag, so no two requests carry one call id), for the ingest duration."""
    sizes = bench.sizes
    shares = _split(sizes.ingest_connections, len(relays))
    cpu = [relay.cpu_seconds() for relay in relays]

    def offer(n: int) -> dict:
        return bench.closed_loop(relays[n].url, f"{tag}-{n}", connections=shares[n],
                                 seconds=sizes.ingest_seconds)

    with ThreadPoolExecutor(max_workers=len(relays)) as pool:  # each load is a process of its own
        loads = list(pool.map(offer, range(len(relays))))
    return {"processes": len(relays), "rate": sum(load["requests"] / load["seconds"] for load in loads),
            "accepted": sum(load["accepted"] for load in loads),
            "relay_cpu_seconds": round(sum(r.cpu_seconds() - c for r, c in zip(relays, cpu, strict=True)), 2),
            "loads": loads}


def scaleout(bench: Bench) -> dict:
    """6. Durable ingest with 1, 2 and 4 `relay serve` processes on one PostgreSQL database,
    each forwarder held back as in 1, the same total of connections shared among them:
    how far ingest grows with the processes (and cores) given to it."""
    runs = {}
    for count in bench.sizes.scaleout_processes:
        store = bench.new_store()
        try:
            with contextlib.ExitStack() as stack:
                up = stack.enter_context(servers.running(
                    lambda count=count: servers.upstream(bench.log(f"upstream-scaleout-{count}"), hold=True)))
                relays = [stack.enter_context(servers.running(
                    lambda i=i, store=store, up=up, count=count: bench.relay(
                        store, up, f"scaleout-{count}-{i}", held=True)))
                          for i in range(count)]
                result = _ingest_together(bench, relays, f"scaleout-{count}")
            stored = store.rows()
        finally:
            store.drop()
        runs[str(count)] = {**result, "rows_stored": stored, "durable": stored >= result["accepted"]}
    most = max(bench.sizes.scaleout_processes)
    return {"cpus": os.cpu_count(), "runs": runs, "most_processes": most,
            "ratio": runs[str(most)]["rate"] / runs["1"]["rate"],
            "durable": all(run["durable"] for run in runs.values())}
