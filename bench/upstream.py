"""A loopback stand-in for Roark that is never the bottleneck: a bare ASGI app on uvicorn
(uvloop, httptools) that reads each request and answers 201 as Roark does, at once or
after `--delay` seconds (awaited, so slow requests cost nothing while they wait).

`--hold` answers 503 with a one-hour Retry-After instead, which makes the relay's
forwarder hold back: ingest can then be measured on its own, as during a Roark outage.

    python -m bench.upstream --port 8788 [--delay 0.2 | --hold]
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

CREATED = (201, b'{"data":{"call_id":"00000000-0000-4000-8000-000000000000"}}')
HELD = (503, b'{"error_type":"server","error_code":"unavailable","message":"held by the bench"}')


def app_for(delay: float, hold: bool):
    status, body = HELD if hold else CREATED
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if hold:
        headers.append((b"retry-after", b"3600"))

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the whole body, as a real server would read it
            more = (await receive()).get("more_body", False)
        if delay:
            await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    uvicorn.run(app_for(args.delay, args.hold), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", lifespan="off", log_level="warning", access_log=False,
                backlog=4096)


if __name__ == "__main__":
    main()
