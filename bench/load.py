"""The load generator: signed VAPI reports, each with a call id of its own, over
keep-alive HTTP/1.1 connections, in one of two disciplines:

- closed loop (`closed`): N connections, each sending its next request as soon as the
  previous answer arrived, for a duration or a number of requests per connection;
- open loop (`open`): requests due at a fixed rate whatever the server does, latency
  counted from when each was due (so a stalled server cannot hide its stall by slowing
  the sender: no coordinated omission), on as many connections as that needs.

It runs in a process of its own (`python -m bench.load ...`) and prints one JSON object.
Written on raw asyncio protocols (uvloop): lean enough to offer thousands of requests a
second from one core. wrk (`bench.wrk`) is leaner still and preferred for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import uvloop

from bench.payloads import template

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)
#: Open loop: most connections it opens; beyond, due requests wait (and it shows in latency).
MAX_OPEN_CONNECTIONS = 512


class Requests:
    """Builds request n: a report whose call id is `{tag}-{n}`."""

    def __init__(self, url: str, secret: str, size: int, tag: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.prefix, self.suffix = template(size)
        self.head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nx-vapi-secret: {secret}\r\n").encode()
        self.tag = tag.encode()
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        body = b"%s%s-%d%s" % (self.prefix, self.tag, self.count, self.suffix)
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body)


class Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for the answer."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) >= total:
            status = int(self.buffer[9:12])
            del self.buffer[:total]
            if not self.waiter.done():
                self.waiter.set_result(status)

    async def exchange(self, request: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.waiter
        finally:
            self.waiter = None


async def connect(requests: Requests) -> Connection:
    _, connection = await asyncio.get_running_loop().create_connection(
        Connection, requests.host, requests.port)
    return connection


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.latencies: list[float] = []

    def record(self, status: int | str, seconds: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies.append(seconds)

    def result(self, elapsed: float, **extra: object) -> dict[str, object]:
        ordered = sorted(self.latencies)
        done = len(ordered)

        def pct(p: float) -> float | None:
            return round(ordered[min(done - 1, int(p / 100 * done))] * 1000, 3) if done else None

        return {"requests": done, "seconds": round(elapsed, 3), "rate": round(done / elapsed, 1),
                "statuses": dict(self.statuses), "accepted": self.statuses.get("200", 0),
                "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "p999": pct(99.9),
                               "max": round(ordered[-1] * 1000, 3) if done else None},
                **extra}


async def closed_loop(requests: Requests, connections: int, duration: float,
                      per_connection: int | None) -> dict[str, object]:
    tally = Tally()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        connection, sent = await connect(requests), 0
        while time.perf_counter() < deadline and (per_connection is None or sent < per_connection):
            start, sent = time.perf_counter(), sent + 1
            try:
                status = await connection.exchange(requests.next())
            except ConnectionError:
                tally.record("error", time.perf_counter() - start)
                connection = await connect(requests)
                continue
            tally.record(status, time.perf_counter() - start)
            if connection.lost:
                connection = await connect(requests)
        connection.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally.result(time.perf_counter() - started, connections=connections)


async def open_loop(requests: Requests, rate: float, duration: float) -> dict[str, object]:
    tally = Tally()
    idle: list[Connection] = []
    opened = 0
    slots = asyncio.Semaphore(MAX_OPEN_CONNECTIONS)

    async def send(due: float) -> None:
        nonlocal opened
        async with slots:
            if idle:
                connection = idle.pop()
            else:
                connection, opened = await connect(requests), opened + 1
            try:
                status = await connection.exchange(requests.next())
            except ConnectionError:
                tally.record("error", time.perf_counter() - due)
                return
            tally.record(status, time.perf_counter() - due)
            if not connection.lost:
                idle.append(connection)

    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    total = int(rate * duration)
    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in idle:
        connection.transport.close()
    return tally.result(elapsed, offered_rate=rate, connections=opened)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("closed", "open"))
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/webhooks/vapi")
    parser.add_argument("--secret", required=True, help="the relay's VAPI_SECRET")
    parser.add_argument("--size", type=int, required=True, help="bytes per report")
    parser.add_argument("--tag", required=True, help="call ids are TAG-1, TAG-2, ...")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--per-connection", type=int, help="closed loop: stop after N each")
    parser.add_argument("--rate", type=float, default=1000.0, help="open loop: requests/s")
    args = parser.parse_args(argv)
    requests = Requests(args.url, args.secret, args.size, args.tag)
    if args.mode == "closed":
        work = closed_loop(requests, args.connections, args.duration, args.per_connection)
    else:
        work = open_loop(requests, args.rate, args.duration)
    json.dump(uvloop.run(work), sys.stdout)
    print()


if __name__ == "__main__":
    main()
