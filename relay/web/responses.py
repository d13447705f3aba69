"""JSON answers rendered by msgspec, the relay's one JSON library: about a tenth of the
standard library's cost, which Starlette's JSONResponse pays on every webhook's answer."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette import responses

_encode = msgspec.json.Encoder().encode


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return _encode(content)
