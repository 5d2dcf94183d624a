"""The endpoints: `/v1/chat/completions`, `/v1/completions` (FireLLaVA's `images` extension), `/v1/models`,
`/health`. A request is checked in order (key, body, schema, model, sampling, prompt), then admitted through the
gate, its images fetched, and answered whole or streamed."""

from __future__ import annotations

import asyncio
import secrets
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from firellava.engines.base import Prompt, SamplingParams
from firellava.serve.body import read_json
from firellava.serve.engines import ServeEngine
from firellava.serve.errors import APIError, error_body
from firellava.serve.prompts import chat_messages, completion_prompt, render, sampling
from firellava.serve.responses import completion_body, timed_out
from firellava.serve.schemas import ChatRequest, CompletionRequest, parse
from firellava.serve.state import ServerState, ServerStateDep
from firellava.serve.streaming import stream_events

router = APIRouter()


def authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(
            401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key"
        )


def check_model(name: str, engine: ServeEngine) -> None:
    if name != engine.model_name:
        raise APIError(
            404,
            f"model {name!r} not found; this server serves {engine.model_name!r}",
            param="model",
            code="model_not_found",
        )


@router.get("/health")
async def health(state: ServerStateDep) -> Response:
    if not state.engine.healthy():
        return JSONResponse(error_body(503, "engine is not running", code="engine_dead"), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/v1/models")
async def models(request: Request, state: ServerStateDep) -> JSONResponse:
    authorize(request, state.settings.api_key)
    card = {
        "id": state.engine.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "firellava",
        "root": state.settings.model,
        "max_model_len": state.engine.max_model_len,
    }
    return JSONResponse({"object": "list", "data": [card]})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: ServerStateDep) -> Response:
    authorize(request, state.settings.api_key)
    req: ChatRequest = parse(ChatRequest, await read_json(request, state.limits.max_request_bytes))
    check_model(req.model, state.engine)
    params = sampling(req, state.limits)
    messages, refs = chat_messages(req, state.limits)
    prompt_text = render(state.engine, messages)
    return await respond(state, req, params, prompt_text, refs, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, state: ServerStateDep) -> Response:
    authorize(request, state.settings.api_key)
    req: CompletionRequest = parse(
        CompletionRequest, await read_json(request, state.limits.max_request_bytes)
    )
    check_model(req.model, state.engine)
    params = sampling(req, state.limits)
    prompt_text, refs = completion_prompt(req, state.limits)
    return await respond(state, req, params, prompt_text, refs, chat=False)


async def respond(
    state: ServerState,
    req: ChatRequest | CompletionRequest,
    params: SamplingParams,
    text: str,
    refs: list[tuple[str, str]],
    *,
    chat: bool,
) -> Response:
    """Admit the request, fetch its images, then answer; the gate slot is held until the answer is complete
    (for a stream, until its last event: the stream frees it)."""
    engine, limits = state.engine, state.limits
    if refs and not engine.image_tokens:
        raise APIError(
            400, f"{engine.model_name} is a text-only model; it takes no images", code="invalid_value"
        )
    state.gate.enter()
    try:
        engine.expect(1)
        try:
            images = await state.fetch_images(refs)
        finally:
            engine.expect(-1)
        prompt = Prompt(text=text, images=images)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = stream_events(state, prompt, params, rid, include_usage, chat=chat)
            return StreamingResponse(events, media_type="text/event-stream", headers={"X-Request-Id": rid})
        try:
            gen = await asyncio.wait_for(engine.generate(prompt, params), limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise timed_out(limits.request_timeout_s) from None
        body = completion_body(rid, engine.model_name, gen, chat=chat, token_ids=bool(req.return_token_ids))
        state.gate.leave()
        return JSONResponse(body, headers={"X-Request-Id": rid})
    except BaseException:
        state.gate.leave()
        raise
