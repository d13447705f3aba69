"""Fake VAPI and Retell APIs served over real loopback HTTP, for reconciliation.

Each holds call objects shaped as the provider's API returns them (built from the
samples), answers the listing and single-call endpoints the way the provider documents
them, records every request, and can be told to misbehave: a script of behaviours
(`RateLimited`, `Respond`, `Slow`, `Trickle`, `Reset` from `relay.testing.fake_roark`),
consumed one per request, a cap on `limit` lower than a client asks for, calls carrying
transcripts of any size (`add(..., transcript_bytes=)`), and, for Retell, a listing that
never ends (`endless`).

    with FakeVapi(api_key="vapi-key", cap=10) as vapi:
        vapi.add(vapi_call("call-1", ended_at=...))
        ...  # point VAPI_API_BASE_URL at vapi.url
"""

from __future__ import annotations

import copy
import functools
import json
import operator
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from relay.core.timefmt import iso
from relay.providers.samples import sample
from relay.providers.vapi_calls import parse_time
from relay.testing.behaviours import Behaviour, RateLimited, Reset, Respond, Slow, Trickle
from relay.testing.roark_contract import error_body


def vapi_call(call_id: str, ended_at: float, *, created_at: float | None = None,
              status: str = "ended") -> dict[str, Any]:
    """A call as `GET /call` returns it, from the sample report: the report's fields on
    the call, recordings under `artifact.recording` as well as the deprecated URLs."""
    message = json.loads(sample("vapi/end-of-call-report"))["message"]
    created_at = ended_at - 30 if created_at is None else created_at
    call = {**message["call"], "id": call_id, "status": status, "createdAt": iso(created_at, milliseconds=True),
            "updatedAt": iso(ended_at if status == "ended" else created_at + 1, milliseconds=True)}
    for name in ("endedReason", "cost", "costs", "analysis", "artifact", "startedAt", "assistant",
                 "customer", "phoneNumber"):
        call[name] = copy.deepcopy(message[name])
    call["startedAt"], call["endedAt"] = iso(created_at + 1, milliseconds=True), iso(ended_at, milliseconds=True)
    call["artifact"]["recording"] = {"stereoUrl": f"https://storage.vapi.ai/{call_id}-stereo.wav",
                                     "mono": {"combinedUrl": f"https://storage.vapi.ai/{call_id}-mono.wav"}}
    if status != "ended":
        for name in ("endedReason", "endedAt", "analysis", "artifact"):
            call.pop(name)
    return call


def retell_call(call_id: str, ended_at: float, *, started_at: float | None = None,
                status: str = "ended") -> dict[str, Any]:
    """A whole call as `GET /v2/get-call` returns it (call_analysis included)."""
    call = json.loads(sample("retell/call_analyzed"))["call"]
    started_at = ended_at - 20 if started_at is None else started_at
    call.update(call_id=call_id, call_status=status, start_timestamp=round(started_at * 1000),
                end_timestamp=round(ended_at * 1000) if status != "ongoing" else None)
    return call


@functools.lru_cache(maxsize=8)
def transcript(size: int) -> bytes:
    """A JSON array of about `size` bytes of word-level transcript entries: what makes a
    long call large, and many small objects to whoever decodes it whole."""
    word = b'{"word": "hello", "start": 12.25, "end": 12.5, "confidence": 0.98}'
    return b"[" + b",".join([word] * max(1, size // (len(word) + 1))) + b"]"


def _placeholder(size: int) -> str:
    """Where a transcript of `size` bytes goes in an answer, until it is encoded."""
    return f"\x00transcript of {size} bytes\x00"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    status: int  # 0: answered nothing


class _FakeApi:
    #: The field a call's transcript of `transcript_bytes` goes in.
    transcript_field: str

    def __init__(self, api_key: str, *, cap: int | None = None, host: str = "127.0.0.1") -> None:
        self.api_key, self.cap = api_key, cap
        self.calls: dict[str, dict[str, Any]] = {}
        self._transcripts: dict[str, int] = {}  # call id -> its transcript's size
        self._lock = threading.Lock()
        self._script: deque[Behaviour] = deque()
        self._requests: list[ApiRequest] = []
        self._stopping = threading.Event()
        self._server = _Server((host, 0), self)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> _FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def add(self, *calls: dict[str, Any], transcript_bytes: int = 0) -> None:
        """Hold `calls`; with `transcript_bytes`, each is answered with a transcript that
        large (made once and shared, so the fake holds no copy per call)."""
        with self._lock:
            for call in calls:
                self.calls[self.call_id(call)] = call
                if transcript_bytes:
                    self._transcripts[self.call_id(call)] = transcript_bytes

    def served(self, call: dict[str, Any]) -> dict[str, Any]:
        """`call` as an answer carries it: with its transcript, when it has one."""
        size = self._transcripts.get(self.call_id(call))
        return call if size is None else {**call, self.transcript_field: _placeholder(size)}

    def encode(self, document: Any) -> bytes:
        payload = json.dumps(document).encode()
        for size in set(self._transcripts.values()):
            payload = payload.replace(json.dumps(_placeholder(size)).encode(), transcript(size))
        return payload

    def script(self, *behaviours: Behaviour) -> None:
        """Behaviours for the next requests, one each, before they are answered normally."""
        with self._lock:
            self._script.extend(behaviours)

    @property
    def scripted(self) -> int:
        """Behaviours scripted and not used yet: one is used as its request arrives."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self._requests)

    def _record(self, request: ApiRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next(self) -> Behaviour | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def limit(self, asked: str | float | None, default: int) -> int:
        limit = int(asked) if asked is not None else default
        return limit if self.cap is None else min(limit, self.cap)

    def call_id(self, call: dict[str, Any]) -> str:
        raise NotImplementedError

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        raise NotImplementedError


class FakeVapi(_FakeApi):
    """`GET /call` (newest first, as VAPI lists) and `GET /call/{id}`."""

    transcript_field = "messages"

    def call_id(self, call: dict[str, Any]) -> str:
        return call["id"]

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/call/"):
            call = self.calls.get(unquote(path.removeprefix("/call/")))
            return (200, self.served(call)) if call else (404, {"message": "Couldn't find call"})
        if (method, path) != ("GET", "/call"):
            return 404, {"message": f"Cannot {method} {path}"}
        found = [call for call in self.calls.values()
                 if all(compare(call[field], _normal(query[f"{field}{op.title()}"]))
                        for field in ("createdAt", "updatedAt") for op, compare in _COMPARISONS.items()
                        if f"{field}{op.title()}" in query)]
        found.sort(key=lambda call: call["createdAt"], reverse=True)
        return 200, [self.served(call) for call in found[: self.limit(query.get("limit"), 100)]]


class FakeRetell(_FakeApi):
    """`POST /v3/list-calls` (filters on end_timestamp, start_timestamp and call_status;
    cursor paging; transcripts left out) and `GET /v2/get-call/{call_id}`.

    `omitted` is what the listing leaves out of each call (`()`: calls listed whole, as
    an API ignoring the documented cut would). `endless` makes the listing never end:
    "fresh" says there is more on every page, under a key never given before, with a
    call never listed before; "repeat" answers the first page again and again, each
    time under a new key."""

    OMITTED = ("transcript", "transcript_object", "transcript_with_tool_calls")
    transcript_field = "transcript_object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.omitted: tuple[str, ...] = self.OMITTED
        self.endless: str | None = None
        self._listings = 0

    def call_id(self, call: dict[str, Any]) -> str:
        return call["call_id"]

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/v2/get-call/"):
            call = self.calls.get(unquote(path.removeprefix("/v2/get-call/")))
            return (200, self.served(call)) if call else (404, {"status": "error", "message": "Not Found"})
        if (method, path) != ("POST", "/v3/list-calls"):
            return 404, {"status": "error", "message": "Not Found"}
        with self._lock:
            self._listings += 1
            listing = self._listings
        criteria = body.get("filter_criteria", {})
        if self.endless == "fresh":
            low, high = criteria["end_timestamp"]["value"]
            call = retell_call(f"endless-{listing}", (low + high) / 2000)
            self.add(call)
            return 200, {"items": [self.listed(call)], "has_more": True, "pagination_key": f"endless-{listing}"}
        found = [call for call in self.calls.values() if _matches(call, criteria)]
        found.sort(key=lambda call: (call["start_timestamp"], call["call_id"]),
                   reverse=body.get("sort_order", "descending") == "descending")
        if (key := body.get("pagination_key")) and self.endless != "repeat":
            ids = [call["call_id"] for call in found]
            found = found[ids.index(key) + 1:] if key in ids else []
        limit = self.limit(body.get("limit"), 50)
        page = [self.listed(call) for call in found[:limit]]
        if self.endless == "repeat":
            return 200, {"items": page, "has_more": True, "pagination_key": f"repeat-{listing}"}
        more = len(found) > limit
        return 200, {"items": page, "has_more": more, "pagination_key": page[-1]["call_id"] if more else None}

    def listed(self, call: dict[str, Any]) -> dict[str, Any]:
        """A call as the listing gives it."""
        whole = self.served(call)
        return {name: value for name, value in whole.items() if name not in self.omitted}


def _normal(text: str) -> str | None:
    """An ISO 8601 time as the fake stores them, so that strings compare as times; None
    when `text` is not one."""
    return iso(parse_time(text), milliseconds=True)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def _matches(call: dict[str, Any], criteria: dict[str, Any]) -> bool:
    for field in ("start_timestamp", "end_timestamp"):
        test, value = criteria.get(field), call.get(field)
        if test is None:
            continue
        if value is None:
            return False
        if test["op"] == "bt":
            if not test["value"][0] <= value <= test["value"][1]:
                return False
        elif not _COMPARISONS[test["op"]](value, test["value"]):
            return False
    status = criteria.get("call_status")
    return status is None or call["call_status"] in status["value"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: _FakeApi) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients and Reset drop connections; the test sees what matters in `requests`


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw) if raw else None

        trickle: float | None = None

        def answer(status: int, document: Any, headers: dict[str, str] | None = None) -> None:
            fake._record(ApiRequest(self.command, parts.path, query, body, status))
            payload = fake.encode(document)
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if trickle is None:
                self.wfile.write(payload)
                return
            self.wfile.flush()
            for byte in payload:
                if fake._stopping.wait(trickle):
                    self.close_connection = True
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

        if self.headers.get("authorization") != f"Bearer {fake.api_key}":
            return answer(401, {"message": "Invalid API key"})
        behaviour = fake._next()
        while isinstance(behaviour, Slow | Trickle):
            if isinstance(behaviour, Trickle):
                trickle = behaviour.seconds
            elif fake._stopping.wait(behaviour.seconds):
                return
            behaviour = behaviour.then
        if isinstance(behaviour, Reset):
            fake._record(ApiRequest(self.command, parts.path, query, body, 0))
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if isinstance(behaviour, RateLimited):
            return answer(429, {"message": "Too many requests"}, {"Retry-After": behaviour.retry_after})
        if isinstance(behaviour, Respond):
            return answer(behaviour.status, behaviour.body or error_body(behaviour.status, "scripted"),
                          behaviour.headers)
        return answer(*fake.answer(self.command, parts.path, query, body))

    do_GET = do_POST = _handle
