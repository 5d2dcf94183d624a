"""The FastAPI app: `/v1/chat/completions`, `/v1/completions` (FireLLaVA's `images` extension), `/v1/models`,
`/health`. Requests are parsed by hand (size-capped body, then JSON, then the schema) so that every failure is an
OpenAI-shaped error with the right status, and never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.engines.base import Generation, Prompt, SamplingParams
from firellava.serve.engines import ServeEngine
from firellava.serve.errors import APIError, error_body
from firellava.serve.images import load_image, make_client
from firellava.serve.schemas import ChatRequest, CompletionRequest, ImageURL, parse
from firellava.serve.settings import Limits, ServerSettings

log = logging.getLogger("serve")


class _Gate:
    """Bounded concurrency: requests being fetched, queued or generated; one more gets 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise APIError(
                429, f"server busy: {self.active} requests in flight; retry later", code="too_many_requests"
            )
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


def create_app(settings: ServerSettings, engine: ServeEngine) -> FastAPI:
    limits = settings.limits
    gate = _Gate(limits.max_pending_requests)
    state: dict[str, httpx.AsyncClient] = {}
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["client"] = make_client()
        try:
            yield
        finally:
            await state["client"].aclose()
            engine.close()

    app = FastAPI(
        title="FireLLaVA OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None
    )

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), code=code), status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body(500, "internal server error", code="internal_error"), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), settings.api_key.encode()
        ):
            raise APIError(
                401, "missing or invalid API key (Authorization: Bearer <key>)", code="invalid_api_key"
            )

    async def read_json(request: Request) -> Any:
        limit = limits.max_request_bytes
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

    def check_model(name: str) -> None:
        if name != engine.model_name:
            raise APIError(
                404,
                f"model {name!r} not found; this server serves {engine.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def sampling(req: ChatRequest | CompletionRequest) -> SamplingParams:
        max_tokens = req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens: at most {limits.max_tokens_limit}",
                param="max_tokens",
                code="invalid_value",
            )
        temperature = limits.default_temperature if req.temperature is None else req.temperature
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=tuple(req.stop or ()),
            seed=req.seed,
        )

    def render(messages: list[dict[str, Any]]) -> str:
        try:
            return engine.render(messages)
        except (jinja2.TemplateError, ValueError) as e:
            raise APIError(400, f"messages: {e}", param="messages", code="invalid_messages") from None

    async def fetch_images(refs: Sequence[tuple[str, str]]) -> list:
        return list(
            await asyncio.gather(*(load_image(url, p, settings.fetch, state["client"]) for url, p in refs))
        )

    # ------------------------------------------------------------------------------------------- routes

    @app.get("/health")
    async def health() -> Response:
        if not engine.healthy():
            return JSONResponse(error_body(503, "engine is not running", code="engine_dead"), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        card = {
            "id": engine.model_name,
            "object": "model",
            "created": created,
            "owned_by": "firellava",
            "root": settings.model,
            "max_model_len": engine.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        req: ChatRequest = parse(ChatRequest, await read_json(request))
        check_model(req.model)
        params = sampling(req)
        messages, refs = chat_messages(req, limits)
        prompt_text = render(messages)
        return await respond(req, params, prompt_text, refs, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
        req: CompletionRequest = parse(CompletionRequest, await read_json(request))
        check_model(req.model)
        params = sampling(req)
        prompt_text, refs = completion_prompt(req, limits)
        return await respond(req, params, prompt_text, refs, chat=False)

    async def respond(req, params: SamplingParams, text: str, refs, *, chat: bool) -> Response:
        if refs and not engine.image_tokens:
            raise APIError(
                400, f"{engine.model_name} is a text-only model; it takes no images", code="invalid_value"
            )
        gate.enter()
        try:
            engine.expect(1)
            try:
                images = await fetch_images(refs)
            finally:
                engine.expect(-1)
            prompt = Prompt(text=text, images=images)
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                events = stream_events(prompt, params, rid, include_usage, chat=chat)
                return StreamingResponse(
                    events, media_type="text/event-stream", headers={"X-Request-Id": rid}
                )
            try:
                gen = await asyncio.wait_for(engine.generate(prompt, params), limits.request_timeout_s)
            except asyncio.TimeoutError:
                raise APIError(
                    503, f"generation took longer than {limits.request_timeout_s}s", code="timeout"
                ) from None
            body = completion_body(rid, engine.model_name, gen, chat=chat)
            gate.leave()
            return JSONResponse(body, headers={"X-Request-Id": rid})
        except BaseException:
            gate.leave()
            raise

    async def stream_events(
        prompt: Prompt, params: SamplingParams, rid: str, include_usage: bool, *, chat: bool
    ) -> AsyncIterator[str]:
        now = int(time.time())
        name = engine.model_name

        def chunk(delta: str | None, finish: str | None, *, role: bool = False) -> str:
            if chat:
                d = (
                    {"role": "assistant", "content": ""}
                    if role
                    else ({} if delta is None else {"content": delta})
                )
                choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
                obj = "text_completion"
            body = {"id": rid, "object": obj, "created": now, "model": name, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        deadline = time.monotonic() + limits.request_timeout_s
        pieces = engine.stream(prompt, params)
        hold = max((len(s) for s in params.stop), default=1) - 1
        try:
            if chat:
                yield chunk(None, None, role=True)
            text, sent = "", 0
            while True:
                try:
                    item = await asyncio.wait_for(anext(pieces), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    raise APIError(
                        503, f"generation took longer than {limits.request_timeout_s}s", code="timeout"
                    ) from None
                if isinstance(item, Generation):
                    gen = item
                    break
                text += item
                safe = _streamable(text, params.stop, hold)
                if safe > sent:
                    yield chunk(text[sent:safe], None)
                    sent = safe
            if gen.text[:sent] != text[:sent]:
                log.warning("%s: streamed text diverged from the final text", rid)
            rest = gen.text[sent:]
            if chat:
                if rest:
                    yield chunk(rest, None)
                yield chunk(None, gen.finish_reason)
            else:
                yield chunk(rest, gen.finish_reason)
            if include_usage:
                usage = {
                    "id": rid,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": now,
                }
                usage.update(model=name, choices=[], usage=_usage(gen))
                yield f"data: {json.dumps(usage)}\n\n"
        except APIError as e:  # headers are sent: the error travels as an event
            yield f"data: {json.dumps(e.body())}\n\n"
        except Exception:
            log.exception("%s: stream failed", rid)
            yield f"data: {json.dumps(error_body(500, 'internal server error', code='internal_error'))}\n\n"
        finally:
            await pieces.aclose()
            gate.leave()
        yield "data: [DONE]\n\n"

    return app


def _streamable(text: str, stops: Sequence[str], hold: int) -> int:
    """How much of the accumulated text can be sent: up to a stop string, and never a possible stop's prefix."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut >= 0:
        return cut
    end = len(text) - hold
    while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character still being decoded
        end -= 1
    return max(end, 0)


def _usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def completion_body(rid: str, model: str, gen: Generation, *, chat: bool) -> dict[str, Any]:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": None,
            "finish_reason": gen.finish_reason,
        }
    else:
        choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(gen),
    }


# ----------------------------------------------------------------------------------------------- prompts


def _keep(n: int, policy: str, what: str) -> list[int]:
    """Indexes of the images to keep under the multi-image policy (the model was trained with one image)."""
    if n <= 1 or policy == "all":
        return list(range(n))
    if policy == "reject":
        raise APIError(
            400, f"{what}: {n} images given; this server accepts one per request", code="too_many_images"
        )
    return [n - 1] if policy == "last" else [0]


def chat_messages(req: ChatRequest, limits: Limits) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Template-ready messages (image parts as {"type": "image"}) and the (url, param) of each kept image."""
    found: list[tuple[int, int, str]] = []
    for i, m in enumerate(req.messages):
        parts = m.content if isinstance(m.content, list) else []
        for j, part in enumerate(parts):
            if part.type == "image_url":
                if m.role != "user":
                    raise APIError(
                        400,
                        f"messages.{i}: images are only allowed in user messages",
                        param=f"messages.{i}.content",
                    )
                found.append((i, j, part.image_url.url))
    if len(found) > limits.max_images_per_request:
        raise APIError(
            400,
            f"messages: {len(found)} images; at most {limits.max_images_per_request} per request",
            param="messages",
            code="too_many_images",
        )
    kept = {(found[k][0], found[k][1]) for k in _keep(len(found), limits.image_policy, "messages")}
    out: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None or isinstance(m.content, str):
            texts = [m.content or ""]
            parts: list[dict[str, Any]] = [{"type": "text", "text": texts[0]}]
        else:
            texts = [p.text for p in m.content if p.type == "text"]
            parts = [
                {"type": "text", "text": p.text} if p.type == "text" else {"type": "image"}
                for j, p in enumerate(m.content)
                if p.type == "text" or (i, j) in kept
            ]
        if any(IMAGE_TOKEN in t for t in texts):
            raise APIError(
                400,
                f"messages.{i}.content: the text contains {IMAGE_TOKEN!r}; send images as image_url parts",
                param=f"messages.{i}.content",
                code="invalid_messages",
            )
        # A message without an image is a plain string: text-only templates (the teacher's Llama-2 one) trim
        # and concatenate `content` and would render a list of parts as its Python repr.
        with_image = any(p["type"] == "image" for p in parts)
        content: Any = parts if role == "user" and with_image else "\n".join(texts)
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise APIError(
            400, "messages: the last message must be from the user", param="messages", code="invalid_messages"
        )
    refs = [(url, f"messages.{i}.content.{j}.image_url") for i, j, url in found if (i, j) in kept]
    return out, refs


def completion_prompt(req: CompletionRequest, limits: Limits) -> tuple[str, list[tuple[str, str]]]:
    """The raw prompt with one `<image>` per entry of `images`, in order (FireLLaVA's completions API)."""
    urls = [u.url if isinstance(u, ImageURL) else u for u in req.images]
    if len(urls) > limits.max_images_per_request:
        raise APIError(
            400,
            f"images: {len(urls)} given; at most {limits.max_images_per_request}",
            param="images",
            code="too_many_images",
        )
    slots = req.prompt.count(IMAGE_TOKEN)
    if slots != len(urls):
        raise APIError(
            400,
            f"prompt has {slots} {IMAGE_TOKEN} placeholder(s) but {len(urls)} image(s) were given",
            param="images",
            code="image_count_mismatch",
        )
    kept = _keep(len(urls), limits.image_policy, "images")
    pieces = req.prompt.split(IMAGE_TOKEN)
    text = pieces[0]
    for k, piece in enumerate(pieces[1:]):
        text += (IMAGE_TOKEN if k in kept else "") + piece
    return text, [(urls[k], f"images.{k}") for k in kept]


def run_server(settings: ServerSettings) -> None:
    """Load the engine, then serve until interrupted (uvicorn handles SIGINT/SIGTERM gracefully)."""
    import uvicorn

    from firellava.serve.engines import build_serve_engine

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    start = time.perf_counter()
    engine = build_serve_engine(settings)
    log.info(
        "engine %s (%s) ready in %.1fs",
        settings.model_name,
        settings.engine.backend,
        time.perf_counter() - start,
    )
    app = create_app(settings, engine)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5
    )
