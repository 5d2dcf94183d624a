"""OpenAI-compatible HTTP backend: any `/v1` endpoint (the built-in server, vLLM's, a hosted one).

Chat prompts go to `/v1/chat/completions` (images as base64 PNG `image_url` parts, in order); raw text prompts
go to `/v1/completions` (images in FireLLaVA's `images` list, one per `<image>` in the text). Requests run
concurrently on a thread pool; transient failures (connection errors, timeouts, 408/429/5xx) are retried with
exponential backoff and jitter, honouring `Retry-After`; anything else fails at once with the server's message.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from PIL import Image

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.engines.base import Generation, Prompt, SamplingParams

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIEngineError(RuntimeError):
    """A request the endpoint refused or that kept failing after the retries."""


def image_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")  # lossless: the server sees the same pixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _parts(content: Any, images: list[Image.Image], where: str) -> Any:
    """Message content with each image slot (a {"type": "image"} part or an `<image>` mark) as an image_url part."""

    def take() -> dict[str, Any]:
        if not images:
            raise ValueError(f"{where}: more image slots than images")
        return {"type": "image_url", "image_url": {"url": image_data_uri(images.pop(0))}}

    if isinstance(content, str):
        if IMAGE_TOKEN not in content:
            return content
        pieces = content.split(IMAGE_TOKEN)
        out = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
        for piece in pieces[1:]:
            out.append(take())
            if piece.strip():
                out.append({"type": "text", "text": piece.lstrip("\n")})
        return out
    out = []
    for part in content or []:
        kind = part.get("type")
        out.append(take() if kind in ("image", "image_url") else dict(part))
    return out


class OpenAIEngine:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        model_name: str | None = None,
        served_model: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        """`model` is what the stage would load (a path or hub id); `served_model` the id the endpoint serves it
        under, sent as `model` (default: `model`). Stages size batches for in-process engines with `batch_size`;
        here it is the number of requests in flight unless `concurrency` says otherwise (default 8)."""
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = served_model or model
        self.model_name = model_name or self.model
        self.concurrency = concurrency or batch_size or 8
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s), limits=limits)

    def close(self) -> None:
        self.client.close()

    def request_body(self, prompt: Prompt, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of one prompt."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        images = list(prompt.images)
        if prompt.messages is not None:
            messages = []
            for i, m in enumerate(prompt.messages):
                messages.append({**m, "content": _parts(m.get("content"), images, f"message {i}")})
            if images:
                raise ValueError(f"{len(images)} image(s) without a slot in the messages")
            return "/chat/completions", {**body, "messages": messages}
        body["prompt"] = prompt.text
        if images:
            body["images"] = [image_data_uri(img) for img in images]
        return "/completions", body

    def _post(self, path: str, body: dict[str, Any], index: int) -> Generation:
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2**attempt * (1 + random.random() / 2)
            try:
                resp = self.client.post(self.base_url + path, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    return self._generation(resp.json(), chat=path == "/chat/completions")
                problem = f"HTTP {resp.status_code}: {_message(resp)}"
                if resp.status_code not in _RETRY_STATUS:
                    raise OpenAIEngineError(f"prompt {index}: {self.base_url}{path} refused it: {problem}")
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            if attempt == self.max_retries:
                raise OpenAIEngineError(
                    f"prompt {index}: {self.base_url}{path} failed {attempt + 1} times: {problem}"
                )
            log.warning("prompt %d: %s; retry %d in %.1fs", index, problem, attempt + 1, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _generation(data: dict[str, Any], *, chat: bool) -> Generation:
        choice = data["choices"][0]
        text = (choice["message"]["content"] or "") if chat else choice["text"]
        usage = data.get("usage") or {}
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        requests = [self.request_body(p, params) for p in prompts]  # bad prompts fail before any request
        if not requests:
            return []
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            out = list(pool.map(lambda a: self._post(*a[1], a[0]), enumerate(requests)))
        log.info(
            "%d prompts via %s in %.1fs (%.2f/s)",
            len(out),
            self.base_url,
            time.perf_counter() - start,
            len(out) / max(time.perf_counter() - start, 1e-9),
        )
        return out


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]
