"""Request bodies: read under a size cap, then decoded as JSON."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from firellava.serve.errors import APIError


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body; 413 past `limit` bytes (checked while it streams in), 400 when not JSON."""
    too_big = APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
