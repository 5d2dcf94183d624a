"""The `serve` stage (end of `make demo`): start the server on the finetuned checkpoint, send one chat request
with an image through the official `openai` client, print the answer, stop the server."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from PIL import Image

from firellava.config import build
from firellava.core.io import write_json
from firellava.serve.process import ServerProcess
from firellava.serve.settings import ServerSettings


@dataclass(frozen=True)
class DemoRequest:
    """`serve.demo`: the one request the stage sends."""

    image: str  # an image file, sent inline as a data URI
    question: str = "What shapes are in this image?"
    max_tokens: int = 32
    start_timeout_s: float = 180.0


def image_data_uri(path: str | Path) -> str:
    """An image file as a base64 data URI of its own format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"serve.demo.image={path}: no such image file")
    with Image.open(path) as image:
        kind = (image.format or "png").lower()
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def serve_once(settings: ServerSettings, request: DemoRequest, out_dir: Path) -> dict[str, Any]:
    from openai import OpenAI

    out_dir.mkdir(parents=True, exist_ok=True)
    with ServerProcess(
        settings, log_path=out_dir / "server.log", start_timeout_s=request.start_timeout_s
    ) as server:
        client = OpenAI(
            base_url=server.base_url + "/v1", api_key=settings.api_key or "none", timeout=120, max_retries=0
        )
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_uri(request.image)}},
                    {"type": "text", "text": request.question},
                ],
            }
        ]
        start = time.perf_counter()
        reply = client.chat.completions.create(
            model=settings.model_name, messages=messages, max_tokens=request.max_tokens, temperature=0.0
        )
        latency = time.perf_counter() - start
    answer = reply.choices[0].message.content
    print(f"[serve] Q: {request.question}\n[serve] A: {answer}", flush=True)
    entry = {
        "dir": str(out_dir),
        "model": settings.model,
        "served_name": settings.model_name,
        "question": request.question,
        "answer": answer,
        "finish_reason": reply.choices[0].finish_reason,
        "latency_s": round(latency, 3),
        "usage": reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
    }
    write_json(out_dir / "demo_request.json", entry)
    return entry


def run(cfg: DictConfig) -> dict[str, Any]:
    settings: ServerSettings = build(cfg.serve)
    # Port 0: a free port, so the demo never collides with a server already running on serve.port.
    settings = replace(settings, port=0)
    if not Path(settings.model).exists():
        raise FileNotFoundError(
            f"serve.model={settings.model}: no checkpoint there (the finetune stage writes it)"
        )
    # Absolute in the summary, like every stage's paths: its readers run from other working directories.
    settings = replace(settings, model=str(Path(settings.model).resolve()))
    return serve_once(settings, settings.demo, Path(build(cfg.paths).serve_dir).resolve())
