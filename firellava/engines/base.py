"""The engine interface: a batch of prompts in, one generation per prompt out, with token counts; and the one
engine spec and constructor every caller goes through."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

# backend name -> "module:class"; a backend's module is imported only when it is used (vLLM needs a GPU).
BACKENDS = {
    "transformers": "firellava.engines.transformers_engine:TransformersEngine",
    "openai": "firellava.engines.openai_engine:OpenAIEngine",
    "vllm": "firellava.engines.vllm_engine:VLLMEngine",
}


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Prompt:
    """Either chat `messages` (rendered by the model's own chat template) or a raw `text` prompt.

    `<image>` marks in the text or `{"type": "image"}` parts in messages take `images` in order.
    """

    messages: Sequence[dict[str, Any]] | None = None
    text: str | None = None
    images: Sequence[Image.Image] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a Prompt needs exactly one of messages or text")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens reached)
    # The ids the model was fed (each image widened to its feature count) and the ids it generated, where the
    # backend knows them (a remote OpenAI API does not): what proves every engine feeds training's tokens.
    prompt_token_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()


class Engine(Protocol):
    model_name: str

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        """One generation per prompt, in order."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """How a model runs: an `engine/<consumer>` config group (conf/engine/{teacher,eval,judge,serve}/).

    `options` go to the backend's constructor in the project's names (`batch_size`, `device`, `dtype`, ...; a
    backend translates them to its own), `sampling` is what the consumer generates with unless it says otherwise
    (eval sets max_tokens per benchmark, datagen adds its stop strings and seed). The model itself is not part of
    the spec: the consumer names it (teacher.model, eval.checkpoint, eval.judge.model, serve.model).
    """

    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown engine backend {self.backend!r}; known: {', '.join(BACKENDS)}")


def render_chat(owner: Any, messages: Sequence[dict[str, Any]]) -> str:
    """Chat messages through the checkpoint's own chat template (its processor's, else its tokenizer's), with the
    generation prompt: every engine renders this way and tokenizes with `chat_format.prompt_ids`."""
    return owner.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def load_template_owner(model: str) -> Any:
    """What carries `model`'s chat template and tokenizer: its processor, or its tokenizer for a text LLM."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model)


def close_engine(engine: Any) -> None:
    """Release an engine's resources where it holds any (vLLM's engine core must not outlive its caller)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def build_engine(spec: EngineSpec, model: str, model_name: str | None = None) -> Engine:
    """The engine that runs `model` (a directory or hub id) the way `spec` says; `model_name` is the name it
    reports (default: `model`)."""
    module, cls = BACKENDS[spec.backend].split(":")
    return getattr(importlib.import_module(module), cls)(
        model=str(model), model_name=model_name, **spec.options
    )
