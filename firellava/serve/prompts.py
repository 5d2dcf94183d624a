"""Validated requests -> what the engine runs: the prompt text, the images to fetch (each as (url, param)) under
the multi-image policy, and the sampling parameters; every refusal is a 400 naming the field."""

from __future__ import annotations

from typing import Any

import jinja2

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.engines.base import SamplingParams
from firellava.serve.engines import ServeEngine
from firellava.serve.errors import APIError
from firellava.serve.schemas import ChatRequest, CompletionRequest, ImageURL
from firellava.serve.settings import Limits


def sampling(req: ChatRequest | CompletionRequest, limits: Limits) -> SamplingParams:
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


def render(engine: ServeEngine, messages: list[dict[str, Any]]) -> str:
    """The checkpoint's chat template applied; a conversation the template refuses is the client's error."""
    try:
        return engine.render(messages)
    except (jinja2.TemplateError, ValueError) as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_messages") from None


def keep_images(n: int, policy: str, what: str) -> list[int]:
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
    kept = {(found[k][0], found[k][1]) for k in keep_images(len(found), limits.image_policy, "messages")}
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
    kept = keep_images(len(urls), limits.image_policy, "images")
    pieces = req.prompt.split(IMAGE_TOKEN)
    text = pieces[0]
    for k, piece in enumerate(pieces[1:]):
        text += (IMAGE_TOKEN if k in kept else "") + piece
    return text, [(urls[k], f"images.{k}") for k in kept]
