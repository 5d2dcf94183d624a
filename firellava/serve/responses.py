"""Response bodies in OpenAI's shapes, shared by the plain and the streamed answers."""

from __future__ import annotations

import json
import time
from typing import Any

from firellava.engines.base import Generation
from firellava.serve.errors import APIError


def usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def completion_body(
    rid: str, model: str, gen: Generation, *, chat: bool, token_ids: bool = False
) -> dict[str, Any]:
    """`token_ids`: add vLLM's `prompt_token_ids` (top level for chat, in the choice for completions) and the
    choice's `token_ids`."""
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": None,
            "finish_reason": gen.finish_reason,
        }
    else:
        choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}
    body = {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(gen),
    }
    if token_ids:
        choice["token_ids"] = list(gen.token_ids)
        (body if chat else choice)["prompt_token_ids"] = list(gen.prompt_token_ids)
    return body


def timed_out(limit_s: float) -> APIError:
    return APIError(503, f"generation took longer than {limit_s}s", code="timeout")


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON body."""
    return f"data: {json.dumps(body)}\n\n"
