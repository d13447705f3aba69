"""A fake Roark Analytics API served over real loopback HTTP.

The relay's end-to-end tests, chaos tests, benchmarks and `relay demo` point the relay at
this server instead of https://api.roark.ai. It checks every request against the upstream
contract (roark_contract.json, copied from the spec) plus the provider facts the schema
cannot express, records everything it receives, and can be told to fail: by a script,
by a default behaviour, or at random.

    with FakeRoark() as fake:
        fake.script(RateLimited("2"), Accept())
        ...  # run the relay against fake.url
        fake.wait_for(lambda requests: any(r.status == 201 for r in requests), timeout=5)

`python -m relay.testing.fake_roark --port 8787` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from relay.testing import roark_results
from relay.testing.behaviours import Accept, Behaviour, RateLimited, Reset, Respond, Slow, Trickle
from relay.testing.roark_contract import Outcome, camel_case, describe, error_body, rejection, validator_for

# Route -> (request schema, snake_case name of the field that carries the provider payload).
_UPLOAD_ROUTES = {
    "/v1/vapi/call": ("VapiCallUploadRequest", "vapi_end_of_call_report_payload"),
    "/v1/retell/call": ("RetellCallUploadRequest", "retell_call_ended_payload"),
}
#: GET <this><job_id>: an evaluation job, which `relay check --upstream` reads to prove a key.
_JOB_ROUTE = "/v1/evaluation/job/"
#: GET /v1/call/<call_id>/<kind>: Roark's verdicts on a call it was sent (relay.testing.roark_results).
_RESULT_ROUTE = re.compile(r"/v1/call/([^/]+)/(evaluation-run|sentiment-run)")
# VAPI reports with transcripts and assistant config can exceed several MB.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    json: Any | None  # None when the body is empty or not JSON
    status: int  # what the fake answered; 0 when it answered nothing (Reset, or stopped)
    received_at: float  # time.time()
    problems: tuple[str, ...]  # how it breaks the contract, whatever the fake answered


class FakeRoark:
    """A Roark API on a background thread; see the module docstring."""

    def __init__(self, api_key: str = "rk_test", field_case: str = "snake",
                 host: str = "127.0.0.1", port: int = 0, *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, results_delay: float = 0.0) -> None:
        """`results_delay`: how long after a call is sent its verdicts stay pending."""
        if field_case not in ("snake", "camel"):
            raise ValueError(f"field_case must be 'snake' or 'camel', not {field_case!r}")
        self.api_key, self.field_case = api_key, field_case
        self.host, self.port, self.max_body_bytes = host, port, max_body_bytes
        self._field_name = camel_case if field_case == "camel" else str
        # Condition's default lock is an RLock, so wait_for predicates may read in_flight.
        self._changed = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._in_flight = 0
        self._control = threading.Lock()
        self._script: deque[Behaviour] = deque()
        self._results_script: deque[Behaviour] = deque()
        self.results_delay = results_delay
        #: Roark's call id -> (when it was sent, the provider's call id).
        self._calls: dict[str, tuple[float, str]] = {}
        self._default: Behaviour = Accept()
        self._chaos: tuple[float, tuple[Behaviour, ...], random.Random] = (0, (), random.Random())
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started_at = 0.0

    def start(self) -> FakeRoark:
        if self._server is not None:
            raise RuntimeError("a FakeRoark starts once; create a new one")
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._started_at = time.monotonic()
        # shutdown() waits for the serve loop's next poll, so a short poll keeps stop() prompt.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,),
                                        name=f"fake-roark:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()  # wakes requests held by Slow, which then answer nothing
        self._server.shutdown()
        self._server.server_close()
        # Idle keep-alive connections would otherwise stay served by their handler threads.
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join()
        # Woken handlers finish in moments; waiting for them makes `requests` final.
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight == 0, timeout=1.0)

    def __enter__(self) -> FakeRoark:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeRoark is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._changed:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests received but not answered yet (for instance held by Slow)."""
        with self._changed:
            return self._in_flight

    def accepted(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def clear(self) -> None:
        with self._changed:
            self._requests.clear()

    def wait_for(self, predicate: Callable[[list[ReceivedRequest]], bool],
                 timeout: float) -> list[ReceivedRequest]:
        """Block until `predicate(requests)` holds. It is re-checked whenever a request
        arrives or is answered, so it may also look at `in_flight`."""
        with self._changed:
            if self._changed.wait_for(lambda: predicate(list(self._requests)), timeout):
                return list(self._requests)
            last = ", ".join(f"{r.method} {r.path} -> {r.status}" for r in self._requests[-5:])
            raise TimeoutError(
                f"FakeRoark: condition not met within {timeout}s; saw {len(self._requests)} "
                f"request(s), {self._in_flight} in flight" + (f"; last: {last}" if last else ""))

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per POST before anything else applies."""
        with self._control:
            self._script.extend(behaviours)

    def results_script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per GET of a verdict before it is answered."""
        with self._control:
            self._results_script.extend(behaviours)

    def _next_result_behaviour(self) -> Behaviour:
        with self._control:
            return self._results_script.popleft() if self._results_script else Accept()

    def set_default(self, behaviour: Behaviour) -> None:
        with self._control:
            self._default = behaviour

    def chaos(self, share: float, behaviours: Sequence[Behaviour], seed: int) -> None:
        """While the script is empty, give `share` of POSTs a random one of `behaviours`."""
        if not 0 <= share <= 1:
            raise ValueError(f"share must be between 0 and 1, not {share}")
        if share and not behaviours:
            raise ValueError("chaos needs behaviours to choose from")
        with self._control:
            self._chaos = (share, tuple(behaviours), random.Random(seed))

    def _next_behaviour(self) -> Behaviour:
        with self._control:
            if self._script:
                return self._script.popleft()
            share, behaviours, rng = self._chaos
            if share and rng.random() < share:
                return rng.choice(behaviours)
            return self._default

    def _add_in_flight(self, delta: int) -> None:
        with self._changed:
            self._in_flight += delta
            self._changed.notify_all()

    def _record(self, request: ReceivedRequest) -> None:
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()

    def _success_body(self) -> dict[str, Any]:
        return {"data": {self._field_name("call_id"): str(uuid.uuid4())}}

    def _evaluate(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Outcome:
        """What a correct Roark would answer, and everything wrong with the request."""
        is_health = (method, path) == ("GET", "/health")
        job_id = path.removeprefix(_JOB_ROUTE) if method == "GET" and path.startswith(_JOB_ROUTE) else ""
        is_job = bool(job_id) and "/" not in job_id
        result = _RESULT_ROUTE.fullmatch(path) if method == "GET" else None
        if not (is_health or is_job or result or (method == "POST" and path in _UPLOAD_ROUTES)):
            return rejection(404, "resource_not_found", f"no such endpoint: {method} {path}")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return rejection(401, "unauthorized", "missing Authorization: Bearer <api key>")
        if token != self.api_key:
            return rejection(401, "unauthorized", "bearer token is not a valid API key")
        if is_health:
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            health = {"status": "healthy", "version": "fake",
                      "timestamp": now.replace("+00:00", "Z"),
                      "uptime_seconds": int(time.monotonic() - self._started_at)}
            return Outcome(200, {"data": health}, ())
        if result:
            return self._verdict(*result.groups())
        if is_job:  # the fake runs no evaluations, so it knows no job
            try:
                uuid.UUID(job_id)
            except ValueError:
                return Outcome(400, error_body(400, f"job_id {job_id!r} is not a UUID",
                                                "invalid_parameter", parameter="job_id"), ())
            return Outcome(404, error_body(404, f"evaluation job {job_id} not found",
                                            "resource_not_found"), ())
        problems = self._body_problems(path, headers, body)
        if problems:
            details = {"problems": list(problems)}
            return Outcome(400, error_body(400, "; ".join(problems), "invalid_parameter",
                                            details=details), problems)
        return Outcome(201, self._accept_call(path, body), ())

    def _accept_call(self, path: str, body: bytes) -> dict[str, Any]:
        """Roark's answer to an upload, remembering the call for its verdicts."""
        answer = self._success_body()
        payload = json.loads(body)[self._field_name(_UPLOAD_ROUTES[path][1])]
        call = payload.get("call") or {}
        provider_call_id = str(call.get("id") or call.get("call_id") or "")
        with self._control:
            self._calls[answer["data"][self._field_name("call_id")]] = (time.time(), provider_call_id)
        return answer

    def _verdict(self, call_id: str, kind: str) -> Outcome:
        with self._control:
            known = self._calls.get(call_id)
        if known is None:
            return Outcome(404, error_body(404, f"call {call_id} not found", "resource_not_found"), ())
        sent_at, provider_call_id = known
        render = roark_results.evaluation_runs if kind == "evaluation-run" else roark_results.sentiment
        return Outcome(200, {"data": render(provider_call_id, sent_at, time.time(), self.results_delay)}, ())

    def _body_problems(self, path: str, headers: dict[str, str], body: bytes) -> tuple[str, ...]:
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return (f"Content-Type must be application/json, not {media_type or 'missing'!r}",)
        try:
            document = json.loads(body)
        except ValueError as exc:
            return (f"body is not valid JSON: {exc}",)
        schema_name, snake_key = _UPLOAD_ROUTES[path]
        validator = validator_for(schema_name, self.field_case)
        errors = sorted(validator.iter_errors(document), key=lambda e: e.json_path)
        if errors:
            return tuple(describe(e) for e in errors)
        key = self._field_name(snake_key)
        payload = document[key]
        problems = []
        if path == "/v1/vapi/call" and payload.get("type") != "end-of-call-report":
            problems.append(
                f'{key} is wrapped in {{"message": ...}}; send the message object itself'
                if "message" in payload
                else f"{key}.type must be 'end-of-call-report', not {payload.get('type')!r}")
        if path == "/v1/retell/call":
            if payload.get("event") != "call_ended":
                problems.append(f"{key}.event must be 'call_ended', not {payload.get('event')!r}")
            if not isinstance(payload.get("call"), dict):
                problems.append(f"{key}.call must be an object")
        return tuple(problems)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck on a silent client must not block interpreter exit

    def __init__(self, address: tuple[str, int], fake: FakeRoark) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients, Reset and stop() drop connections all the time; only real bugs are news.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the relay's httpx pool expects
    disable_nagle_algorithm = True  # headers and body are two writes; Nagle would add 40 ms
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks want a quiet console

    def _handle(self) -> None:
        fake = self.server.fake
        received_at = time.time()
        fake._add_in_flight(1)
        try:
            self._answer(fake, received_at)
        finally:
            fake._add_in_flight(-1)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _answer(self, fake: FakeRoark, received_at: float) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?", 1)[0]
        body, outcome = self._read_body(headers, fake.max_body_bytes)

        def record(status: int, problems: tuple[str, ...]) -> None:
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            fake._record(ReceivedRequest(self.command, path, headers, body, parsed, status,
                                         received_at, problems))

        if outcome is not None:  # the framing is suspect, so nothing may follow on this connection
            self.close_connection = True
            record(outcome.status, outcome.problems)
            self._send(outcome.status, outcome.body)
            return

        outcome = fake._evaluate(self.command, path, headers, body)
        behaviour = fake._next_behaviour() if self.command == "POST" else \
            fake._next_result_behaviour() if _RESULT_ROUTE.fullmatch(path) else Accept()
        trickle = None
        while isinstance(behaviour, Slow | Trickle):
            if isinstance(behaviour, Trickle):
                trickle = behaviour.seconds
            elif fake._stopping.wait(behaviour.seconds):
                self.close_connection = True
                record(0, outcome.problems)
                return
            behaviour = behaviour.then or Accept()

        if isinstance(behaviour, Reset):
            record(0, outcome.problems)
            # Linger 0 turns close() into an RST, which is what a crashed proxy looks like.
            linger_zero = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            self.connection.close()
            self.close_connection = True
            return
        response: dict[str, Any] | None
        status, response, extra_headers = outcome.status, outcome.body, {}
        if isinstance(behaviour, Respond):
            status, response, extra_headers = behaviour.status, behaviour.body, behaviour.headers
            if response is None and status != 204:
                phrase = self.responses.get(status, ("Error",))[0]
                success = 200 <= status < 300
                response = fake._success_body() if success else error_body(status, phrase)
        elif isinstance(behaviour, RateLimited):
            status, response = 429, error_body(429, "Rate limit exceeded", "rate_limit_exceeded")
            extra_headers = {"Retry-After": behaviour.retry_after}
            if behaviour.retry_after_ms is not None:
                extra_headers["retry-after-ms"] = behaviour.retry_after_ms
        record(status, outcome.problems)
        self._send(status, response, extra_headers, trickle)

    def _read_body(self, headers: dict[str, str], limit: int) -> tuple[bytes, Outcome | None]:
        declared = headers.get("content-length")
        if "transfer-encoding" in headers or (declared is None and self.command == "POST"):
            return b"", rejection(411, "length_required",
                                   "Content-Length is required (chunked bodies are not supported)")
        if declared is None:
            return b"", None
        if not declared.isdigit():
            return b"", rejection(400, "invalid_content_length",
                                   f"Content-Length {declared!r} is not a byte count")
        remaining = int(declared)
        if remaining <= limit:
            return self.rfile.read(remaining), None
        # Drain instead of closing early: a client still sending would see a reset, not the 400.
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        return b"", rejection(400, "payload_too_large",
                               f"a {declared} byte body exceeds the fake's {limit} byte limit")

    def _send(self, status: int, body: dict[str, Any] | None,
              headers: dict[str, str] | None = None, trickle: float | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if trickle is None:
            self.wfile.write(payload)
            return
        self.wfile.flush()
        for byte in payload:
            if self.server.fake._stopping.wait(trickle):
                self.close_connection = True
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m relay.testing.fake_roark",
                                     description="Run a fake Roark API until Ctrl-C.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--api-key", default="rk_test")
    parser.add_argument("--field-case", choices=("snake", "camel"), default="snake")
    args = parser.parse_args(argv)
    with FakeRoark(args.api_key, args.field_case, args.host, args.port) as fake:
        print(f"fake Roark listening on {fake.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
