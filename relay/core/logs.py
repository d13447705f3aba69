"""Structured logs: JSON lines in production, readable columns on a terminal.

Log events carry ids, statuses and durations only. Bodies, headers, signatures and
secrets are never passed to a logger, so there is nothing to scrub afterwards.
"""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog
from structlog.typing import Processor

# A third cheaper per line than the standard library's json, on every webhook and attempt;
# anything not JSON by nature is logged as its str().
_encode = msgspec.json.Encoder(enc_hook=str).encode


def _dumps(event: object, **_: object) -> str:
    return _encode(event).decode()


def configure(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # uvicorn and other libraries log through the standard library: same format, same stream.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs each request's whole URL at INFO, and a URL can be a credential (a Slack
    # webhook's path is its secret); the relay logs what it sends in its own words.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
