"""What one server holds while it runs (on `app.state.server`): settings, engine, the admission gate, the
image-fetch client and the model card's creation time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import Depends, Request
from PIL import Image

from firellava.serve.engines import ServeEngine
from firellava.serve.errors import APIError
from firellava.serve.images import load_image, make_client
from firellava.serve.settings import Limits, ServerSettings


class Gate:
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


@dataclass
class ServerState:
    settings: ServerSettings
    engine: ServeEngine
    gate: Gate
    created: int = field(default_factory=lambda: int(time.time()))
    client: httpx.AsyncClient | None = None  # open between startup and shutdown (see `running`)

    @classmethod
    def create(cls, settings: ServerSettings, engine: ServeEngine) -> ServerState:
        return cls(settings, engine, Gate(settings.limits.max_pending_requests))

    @property
    def limits(self) -> Limits:
        return self.settings.limits

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan: one pooled image client for all requests; the engine closes with the server."""
        self.client = make_client()
        try:
            yield
        finally:
            await self.client.aclose()
            self.engine.close()

    async def fetch_images(self, refs: Sequence[tuple[str, str]]) -> list[Image.Image]:
        """The images at each (url, param), fetched concurrently; the first failure names its param."""
        assert self.client is not None, "images are fetched only while the server runs"
        return list(
            await asyncio.gather(*(load_image(url, p, self.settings.fetch, self.client) for url, p in refs))
        )


def server_state(request: Request) -> ServerState:
    return request.app.state.server


ServerStateDep = Annotated[ServerState, Depends(server_state)]
