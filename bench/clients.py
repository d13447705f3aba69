"""HTTP clients' CPU per request, the forwarders' largest cost: 128 concurrent POSTs of
a 7 KB body to the stand-in Roark (bench/upstream.py) on 127.0.0.1, uvloop, one process,
`getrusage` (every thread) around 5,000 requests after as many to warm up, each client
twice, alternating: aiohttp, which the relay's other requests use (relay.core.transport),
and pyreqwest, a Rust-backed client, which sends its deliveries
(relay.core.delivery_transport) since the fourth performance round (BENCHMARKS.md).

    python -m bench.clients
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench import servers

REQUESTS, CONCURRENCY = 5000, 128
BODY = b'{"report": "' + b"a" * 7100 + b'"}'
HEADERS = {"Authorization": "Bearer rk_bench", "Content-Type": "application/json", "User-Agent": "bench"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(send: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """CPU microseconds per request and requests per second, after a warm-up round."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with slots:
            await send()

    for _ in range(2):
        started, cpu = time.perf_counter(), _cpu()
        await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return (_cpu() - cpu) / REQUESTS * 1e6, REQUESTS / (time.perf_counter() - started)


async def _aiohttp(url: str) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
        return await _measure(send)


async def _pyreqwest(url: str) -> tuple[float, float]:
    from pyreqwest.client import ClientBuilder

    async with ClientBuilder().max_connections(CONCURRENCY).build() as client:
        async def send() -> None:
            async with client.post(url).headers(HEADERS).body_bytes(BODY).build_streamed() as response:
                await response.bytes()
        return await _measure(send)


def main() -> None:
    clients = {"aiohttp": _aiohttp, "pyreqwest": _pyreqwest}
    upstream = servers.upstream(Path(tempfile.mkdtemp(prefix="relay-bench-clients-")) / "upstream.log")
    try:
        for _ in range(2):
            for name, measure in clients.items():
                microseconds, rate = uvloop.run(measure(f"{upstream.url}/v1/vapi/call"))
                print(f"{name:10} {microseconds:6.0f} us of CPU per request  {rate:7.0f} requests/s")
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
