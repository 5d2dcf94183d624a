"""`stream=true` answers as server-sent events: chunks as text is generated (never a stop string, nor a prefix
that may become one), the finish reason, the usage when asked for, then `[DONE]`. Once the headers are sent an
error can only travel as an event."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from firellava.engines.base import Generation, Prompt, SamplingParams
from firellava.serve.errors import APIError, error_body
from firellava.serve.responses import sse, timed_out, usage
from firellava.serve.state import ServerState

log = logging.getLogger("serve")

DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class _Chunks:
    """One stream's events: every chunk carries the same id, object, creation time and model."""

    rid: str
    model: str
    chat: bool
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def _event(self, choices: list, **extra) -> str:
        body = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        return sse(body | extra)

    def text(self, delta: str | None, finish: str | None, *, role: bool = False) -> str:
        if self.chat:
            d = (
                {"role": "assistant", "content": ""}
                if role
                else ({} if delta is None else {"content": delta})
            )
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return self._event([choice], **({"usage": None} if self.include_usage else {}))

    def usage(self, gen: Generation) -> str:
        return self._event([], usage=usage(gen))


async def stream_events(
    state: ServerState, prompt: Prompt, params: SamplingParams, rid: str, include_usage: bool, *, chat: bool
) -> AsyncIterator[str]:
    """The answer's events. The request's gate slot is this stream's from here on: freed when it ends."""
    engine, limit_s = state.engine, state.limits.request_timeout_s
    chunks = _Chunks(rid, engine.model_name, chat, include_usage)
    deadline = time.monotonic() + limit_s
    pieces = engine.stream(prompt, params)
    hold = max((len(s) for s in params.stop), default=1) - 1
    try:
        if chat:
            yield chunks.text(None, None, role=True)
        text, sent = "", 0
        while True:
            try:
                item = await asyncio.wait_for(anext(pieces), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise timed_out(limit_s) from None
            if isinstance(item, Generation):
                gen = item
                break
            text += item
            safe = streamable(text, params.stop, hold)
            if safe > sent:
                yield chunks.text(text[sent:safe], None)
                sent = safe
        if gen.text[:sent] != text[:sent]:
            log.warning("%s: streamed text diverged from the final text", rid)
        rest = gen.text[sent:]
        if chat:
            if rest:
                yield chunks.text(rest, None)
            yield chunks.text(None, gen.finish_reason)
        else:
            yield chunks.text(rest, gen.finish_reason)
        if include_usage:
            yield chunks.usage(gen)
    except APIError as e:
        yield sse(e.body())
    except Exception:
        log.exception("%s: stream failed", rid)
        yield sse(error_body(500, "internal server error", code="internal_error"))
    finally:
        await pieces.aclose()
        state.gate.leave()
    yield DONE


def streamable(text: str, stops: Sequence[str], hold: int) -> int:
    """How much of the accumulated text can be sent: up to a stop string, and never a possible stop's prefix."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut >= 0:
        return cut
    end = len(text) - hold
    while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character still being decoded
        end -= 1
    return max(end, 0)
