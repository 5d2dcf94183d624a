"""Request bodies: read under a size cap, refused when arrays/objects nest too deeply, then decoded as JSON.

The nesting check runs before decoding because the decoder recurses once per level: a body of a few thousand
`{"a":` would otherwise stop it with a RecursionError (a 500) instead of a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from firellava.serve.errors import APIError

# Far beyond any OpenAI request (tool and response schemas included), far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 128

_DECODER = json.JSONDecoder()  # what json.loads uses
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_RUN = re.compile(rb"\[+|\]+")
# Each peel lowers every innermost pair at C speed; after k peels every peak left stands for a subtree at least
# k + 1 levels high, so few runs remain for the Python loop however the brackets are laid out.
_PEELS = 16


def nests_deeper(text: str, limit: int) -> bool:
    """Whether the JSON text's arrays and objects nest more than `limit` levels deep, found without recursion.
    Exact for valid JSON; on invalid JSON it may overestimate (the body is refused either way)."""
    data = text.encode("utf-8", "surrogatepass")  # no character but a bracket encodes to a bracket's byte
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(_AS_BRACKETS, _NOT_BRACKETS)
    # Removing a matched "[]" leaves the depth at every other position as it was: each peel lowers the deepest
    # level by at most one, and by exactly one while the brackets balance.
    peeled = 0
    while peeled < _PEELS and b"[]" in brackets:
        brackets = brackets.replace(b"[]", b"")
        peeled += 1
    depth = peeled
    if depth > limit:
        return True
    for run in _RUN.finditer(brackets):
        depth += len(run[0]) if run[0][0] == ord("[") else -len(run[0])
        if depth > limit:
            return True
    return False


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body; 413 past `limit` bytes (checked while it streams in), 400 when not JSON."""
    too_big = APIError(413, f"request body larger than {limit} bytes", code="request_too_large")
    return decode(await read_capped(request.stream(), request.headers.get("content-length"), limit, too_big))


async def read_capped(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int, too_big: APIError
) -> bytes:
    """Everything `chunks` yields; `too_big` as soon as the declared length or what has arrived passes `limit`
    bytes, so a hostile sender never makes the server hold more than that (request bodies and fetched images)."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise too_big
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise too_big
    return bytes(data)


def decode(body: bytes | bytearray) -> Any:
    """The body's JSON value; 400 (invalid_json) when it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        # Decoded as json.loads decodes bytes (UTF-8, -16 or -32), so that the nesting check reads what is parsed.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        if nests_deeper(text, MAX_JSON_DEPTH):
            raise APIError(
                400,
                f"request body nests arrays/objects more than {MAX_JSON_DEPTH} levels deep",
                code="invalid_json",
            )
        return _DECODER.decode(text)
    # RecursionError only if the depth cap is ever raised near the interpreter's recursion limit.
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
