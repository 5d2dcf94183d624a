"""Typed server settings: the `serve` config group, built by the entry points (never a DictConfig below). A server
started in a child process gets them as a config node (`firellava.config.to_node`) and builds them again."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from firellava.engines.base import EngineSpec

if TYPE_CHECKING:  # the stage imports these settings
    from firellava.serve.stage import DemoRequest

IMAGE_POLICIES = ("last", "first", "all", "reject")
BACKENDS = ("transformers", "vllm")  # the engines the server runs (firellava.serve.engines)


@dataclass(frozen=True)
class FetchPolicy:
    """How image inputs are fetched and decoded. Defaults are the FireLLaVA API's documented limits."""

    max_image_bytes: int = 5_000_000
    timeout_s: float = 1.5
    max_redirects: int = 3
    # Image URLs resolving to loopback/private/link-local/multicast/reserved addresses are refused unless they
    # fall in one of these networks (CIDR).
    allow_networks: Sequence[str] = ()
    formats: Sequence[str] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "PPM", "WEBP")
    max_image_pixels: int = 50_000_000  # decompression-bomb guard, checked before pixels are decoded
    user_agent: str = "firellava-serve/0.1 (+https://github.com/firellava)"

    def __post_init__(self) -> None:
        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"serve.fetch.allow_networks: {net!r} is not a network: {e}") from None

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.allow_networks]


@dataclass(frozen=True)
class Limits:
    max_images_per_request: int = 30
    max_request_bytes: int = 10_000_000
    image_policy: str = (
        "last"  # several images: keep the last / the first / all of them, or reject the request
    )
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    default_temperature: float = 1.0  # OpenAI's default when a request names none
    max_pending_requests: int = 64  # fetching + queued + generating; beyond this a request gets 429
    request_timeout_s: float = 120.0
    batch_wait_s: float = 0.02  # how long the batching worker waits for more requests to join a batch
    max_batch_wait_s: float = 0.25  # ... at most, while admitted requests are still loading their images

    def __post_init__(self) -> None:
        if self.image_policy not in IMAGE_POLICIES:
            raise ValueError(f"serve.limits.image_policy={self.image_policy!r}; known: {IMAGE_POLICIES}")


@dataclass(frozen=True)
class ServerSettings:
    model: str  # checkpoint directory (or hub id for vLLM)
    model_name: str  # the id clients send as `model` (the config's default: the checkpoint directory's name)
    engine: EngineSpec = field(default_factory=lambda: EngineSpec("transformers"))  # engine.serve
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    limits: Limits = field(default_factory=Limits)
    log_level: str = "info"
    demo: DemoRequest | None = None  # the `serve` stage's request; the server itself ignores it

    def __post_init__(self) -> None:
        if self.engine.backend not in BACKENDS:
            raise ValueError(f"engine.serve.backend={self.engine.backend!r}; the server runs {BACKENDS}")
