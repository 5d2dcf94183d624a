"""OpenAI request and response shapes (chat completions with image parts; completions with FireLLaVA's `images`).

Unknown request fields are ignored, as OpenAI-compatible servers do; fields we cannot honour (n > 1, logprobs,
tools) are refused rather than silently dropped. Known fields take only their JSON type, as OpenAI checks them:
`"stream": "yes"` or `1` is not a boolean, `"max_tokens": "5"` or `5.0` not an integer (an integer is a number,
though: `"temperature": 0` is fine).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firellava.serve.errors import APIError


class _Body(BaseModel):
    # strict: no coercion between JSON types (pydantic's lax mode would read "yes" or 1 as true)
    model_config = ConfigDict(extra="ignore", strict=True)


class ImageURL(_Body):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # accepted and ignored (one resolution per model)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    # vLLM's extension: the ids the model was fed and generated, in vLLM's response fields (whole answers only)
    return_token_ids: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | int | None) -> None:
        if v:
            raise ValueError("logprobs are not supported")
        return None

    @model_validator(mode="after")
    def _token_ids_whole(self) -> _Sampling:
        if self.return_token_ids and self.stream:
            raise ValueError("return_token_ids: only for answers sent whole (stream=false)")
        return self


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[Any] | None) -> None:
        if v:
            raise ValueError("tools are not supported by this model")
        return None

    @model_validator(mode="after")
    def _token_cap(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    images: list[str | ImageURL] = Field(default_factory=list)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            return v[0]
        return v


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "ImageURL"}


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a request body; the first problem becomes a 400 naming its field, as OpenAI reports it."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        # Union members show up in the location as type names ("str", "list[...]"); keep only field names/indexes.
        loc = [p for p in err["loc"] if isinstance(p, int) or (p not in _TYPE_NAMES and "[" not in p)]
        param = ".".join(str(p) for p in loc) or None
        message = err["msg"].removeprefix("Value error, ")
        raise APIError(
            400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
        ) from None
