"""The ceiling: a bare Starlette endpoint that only reads the body and answers 200,
served by uvicorn exactly as `relay serve` serves the relay (`relay.http.server.uvicorn_config`,
same settings from the same environment), so the two differ only in the app.

    python -m bench.bare --port 8001
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.http.server import uvicorn_config
from relay.settings import Settings

ACCEPTED = b'{"data":{"status":"accepted","delivery_id":1}}'


async def receive(request: Request) -> Response:
    await request.body()
    return Response(ACCEPTED, media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[Route("/webhooks/{provider:str}", receive, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    uvicorn.Server(uvicorn_config(settings, create_app(), "127.0.0.1", args.port)).run()


if __name__ == "__main__":
    main()
