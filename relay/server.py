"""Running the app under uvicorn, the way `relay serve` and `relay demo` do."""

from __future__ import annotations

import threading
from collections.abc import Callable

import uvicorn

from relay import logs
from relay.app import create_app
from relay.settings import Settings


def run(
    settings: Settings,
    host: str,
    port: int,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `on_started(base_url)` runs on a helper thread once
    the server accepts connections."""
    logs.configure(settings.log_level, settings.log_format)
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level,
        log_config=None,  # relay.logs already routed the standard library's logging
        access_log=False,
        # The forwarder gets its own grace period during lifespan shutdown.
        timeout_graceful_shutdown=max(settings.shutdown_grace_seconds, 1.0),
    ))
    if on_started is not None:
        def notify() -> None:
            while not server.started:
                if server.should_exit:
                    return
                threading.Event().wait(0.02)
            on_started(f"http://{host}:{port}")

        threading.Thread(target=notify, name="relay-on-started", daemon=True).start()
    server.run()
