"""JSON answers rendered by msgspec, the relay's one JSON library, rather than by the
standard library's json, whose cost Starlette's JSONResponse pays on every webhook's
answer (BENCHMARKS.md, "The third round")."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette import responses

_encode = msgspec.json.Encoder().encode


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return _encode(content)
